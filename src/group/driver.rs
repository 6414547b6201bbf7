//! Drives a [`Group`] in tests as a coordinator does: numbers each request with a ticket, hands
//! it to the group's step, and keeps the answers that come back until the test reads them. An
//! answer to a ticket never handed out, or a second answer to one, fails the test at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::state::{Action, Event, Group, MemberAnswer, MemberRequest, Ticket};

pub struct Driver {
    pub group: Group,
    next_ticket: u64,
    /// Handed out, not answered yet.
    unanswered: BTreeSet<Ticket>,
    /// Answered, not read yet.
    answers: BTreeMap<Ticket, MemberAnswer>,
}

impl Driver {
    pub fn new(group: Group) -> Self {
        let (unanswered, answers) = (BTreeSet::new(), BTreeMap::new());
        Self { group, next_ticket: 0, unanswered, answers }
    }

    /// Hands `request` to the group; its answer may come now or in a later step.
    pub fn ask<R: MemberRequest>(&mut self, request: R, now: Instant) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.unanswered.insert(ticket);
        let actions = self.group.step(Event::Request { ticket, call: request.into_call() }, now);
        self.take(actions);
        ticket
    }

    /// Hands `request` to the group and returns its answer, which must come at once.
    pub fn call<R: MemberRequest>(&mut self, request: R, now: Instant) -> R::Answer {
        let ticket = self.ask(request, now);
        self.answer::<R>(ticket).unwrap_or_else(|| panic!("{ticket:?} was not answered at once"))
    }

    /// Time passes; returns the members whose sessions expired.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let actions = self.group.step(Event::Tick, now);
        self.take(actions)
    }

    /// The answer to `ticket` if it has come, read once.
    pub fn answer<R: MemberRequest>(&mut self, ticket: Ticket) -> Option<R::Answer> {
        let answer = self.answers.remove(&ticket)?;
        let typed = R::from_answer(answer);
        Some(typed.unwrap_or_else(|| panic!("{ticket:?} got the answer to another request")))
    }

    /// Tickets handed out and not answered yet.
    pub fn unanswered(&self) -> &BTreeSet<Ticket> {
        &self.unanswered
    }

    fn take(&mut self, actions: Vec<Action>) -> Vec<String> {
        let mut expired = Vec::new();
        for action in actions {
            match action {
                Action::Answer { ticket, answer } => {
                    assert!(
                        self.unanswered.remove(&ticket),
                        "{ticket:?} was answered twice, or never handed out"
                    );
                    self.answers.insert(ticket, answer);
                }
                Action::Expired { member_id } => expired.push(member_id),
            }
        }
        expired
    }
}
