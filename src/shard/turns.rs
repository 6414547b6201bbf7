//! First-come, first-served turns: callers are served strictly in the order they took a ticket.
//!
//! glommio's `Semaphore` does not promise that: a unit released to a waiter that has not run yet
//! can be taken by a newcomer whose first poll comes first. Calls to another shard take their
//! ticket synchronously, on their first poll, so the turn order is the order the calls were made.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use event_listener::Event;

#[derive(Default)]
pub struct Turns {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets dropped before their turn: skipped when it comes.
    abandoned: RefCell<BTreeSet<u64>>,
    changed: Event,
}

/// A place in line; dropping it ends the turn (or gives up the place).
pub struct Ticket<'a> {
    turns: &'a Turns,
    number: u64,
}

impl Turns {
    /// Takes the next place in line, without waiting.
    pub fn take(&self) -> Ticket<'_> {
        let number = self.next_ticket.get();
        self.next_ticket.set(number + 1);
        Ticket { turns: self, number }
    }

    fn advance(&self) {
        let mut serving = self.serving.get() + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while abandoned.remove(&serving) {
            serving += 1;
        }
        self.serving.set(serving);
        drop(abandoned);
        self.changed.notify(usize::MAX);
    }
}

impl Ticket<'_> {
    /// Waits until it is this ticket's turn.
    pub async fn wait(&self) {
        loop {
            let listener = self.turns.changed.listen();
            if self.turns.serving.get() == self.number {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.turns.serving.get() == self.number {
            self.turns.advance();
        } else {
            self.turns.abandoned.borrow_mut().insert(self.number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn turns_come_in_ticket_order_and_abandoned_tickets_are_skipped() {
        let executor =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap();
        executor.run(async {
            let turns = Rc::new(Turns::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            // The first holder keeps its turn a while, so everyone else queues behind it.
            let first = turns.take();
            let abandoned = turns.take();
            let mut tasks = Vec::new();
            for id in 0..5u32 {
                let (turns, order) = (turns.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    let ticket = turns.take();
                    // Later tasks sleep less, so they would win a race to a free unit.
                    glommio::timer::sleep(Duration::from_millis(u64::from(5 - id))).await;
                    ticket.wait().await;
                    order.borrow_mut().push(id);
                }));
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
            drop(abandoned);
            drop(first);
            for task in tasks {
                task.await;
            }
            assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
        });
    }
}
