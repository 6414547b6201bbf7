//! The channel mesh between shards: one bounded glommio shared channel for each ordered pair of
//! shards, all made on the main thread before the shards start, each shard handed its own ends.
//!
//! glommio's `MeshBuilder` is not used: it keeps its peer list in an `Rc` yet declares itself
//! `Send`, and every shard clones and drops its copy on its own thread. Those unsynchronised
//! count changes raced and freed the list twice or early, so about one broker start in 150 on
//! a loaded machine died in malloc. Here nothing is shared: each channel end has one owner and
//! moves to its shard whole.

use std::sync::Mutex;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::types::ShardId;

/// One shard's ends of the mesh, before it connects them on its own executor.
pub struct MeshEnds<T: Send> {
    id: usize,
    /// `senders[to]` carries this shard's messages to shard `to`; none to itself.
    senders: Vec<Option<SharedSender<T>>>,
    /// `receivers[from]` brings shard `from`'s messages here; none from itself.
    receivers: Vec<Option<SharedReceiver<T>>>,
}

/// The ends of a full mesh of `shards` shards, `capacity` messages per channel, one slot per
/// shard id, for the shards to take as they start.
pub fn full<T: Send + 'static>(shards: usize, capacity: usize) -> Mutex<Vec<Option<MeshEnds<T>>>> {
    let mut senders: Vec<Vec<Option<SharedSender<T>>>> =
        (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<T>>>> =
        (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
    for from in 0..shards {
        for to in (0..shards).filter(|to| *to != from) {
            let (sender, receiver) = shared_channel::new_bounded(capacity);
            senders[from][to] = Some(sender);
            receivers[to][from] = Some(receiver);
        }
    }
    let ends = senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(id, (senders, receivers))| Some(MeshEnds { id, senders, receivers }))
        .collect();
    Mutex::new(ends)
}

/// Takes the ends of shard `preferred` if they are still there, else any shard's; `None` once
/// every shard has taken its own.
pub fn take<T: Send>(
    slots: &Mutex<Vec<Option<MeshEnds<T>>>>,
    preferred: Option<usize>,
) -> Option<MeshEnds<T>> {
    // A poisoned lock means another shard panicked while taking: the ends are whole either way.
    let mut ends = slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(mine) = preferred.and_then(|id| ends.get_mut(id)).and_then(Option::take) {
        return Some(mine);
    }
    ends.iter_mut().find_map(Option::take)
}

impl<T: Send + 'static> MeshEnds<T> {
    /// This shard's id, its index in the mesh.
    pub fn id(&self) -> ShardId {
        ShardId(self.id)
    }

    /// Connects every end on this shard's executor. A connection completes only when the
    /// shard at the other end connects too, so all of them are started before any is awaited.
    pub async fn connect(self) -> (Peers<T>, Vec<(ShardId, ConnectedReceiver<T>)>) {
        let senders: Vec<_> = (self.senders.into_iter())
            .map(|end| end.map(|end| glommio::spawn_local(end.connect())))
            .collect();
        let receivers: Vec<_> = (self.receivers.into_iter().enumerate())
            .filter_map(|(from, end)| Some((ShardId(from), glommio::spawn_local(end?.connect()))))
            .collect();
        let mut connected_senders = Vec::with_capacity(senders.len());
        for sender in senders {
            connected_senders.push(match sender {
                Some(connecting) => Some(connecting.await),
                None => None,
            });
        }
        let mut connected_receivers = Vec::with_capacity(receivers.len());
        for (from, connecting) in receivers {
            connected_receivers.push((from, connecting.await));
        }
        (Peers { senders: connected_senders }, connected_receivers)
    }
}

/// The sending ends of one shard, connected.
pub struct Peers<T: Send> {
    senders: Vec<Option<ConnectedSender<T>>>,
}

/// A message that did not reach its shard: the shard is stopping, or there is no such shard.
#[derive(Debug)]
pub struct Undelivered;

impl<T: Send> Peers<T> {
    /// Sends `message` to shard `to`, waiting while its channel is full.
    pub async fn send_to(&self, to: ShardId, message: T) -> Result<(), Undelivered> {
        match self.senders.get(to.0) {
            Some(Some(sender)) => sender.send(message).await.map_err(|_| Undelivered),
            _ => Err(Undelivered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_takes_the_ends_it_prefers_while_they_are_there() {
        let slots = full::<u8>(3, 1);
        assert_eq!(take(&slots, Some(2)).map(|e| e.id()), Some(ShardId(2)));
        assert_eq!(take(&slots, Some(2)).map(|e| e.id()), Some(ShardId(0)));
        assert_eq!(take(&slots, Some(9)).map(|e| e.id()), Some(ShardId(1)));
        assert!(take(&slots, None).is_none());
    }

    /// Three shards on their own threads: every shard reaches every other, in order, and a
    /// shard has no channel to itself.
    #[test]
    fn every_shard_reaches_every_other_in_order() {
        const SHARDS: usize = 3;
        const MESSAGES: usize = 100;
        let slots = std::sync::Arc::new(full::<(ShardId, usize)>(SHARDS, 4));
        let threads: Vec<_> = (0..SHARDS)
            .map(|_| {
                let slots = slots.clone();
                std::thread::spawn(move || {
                    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                        .make()
                        .expect("executor")
                        .run(async move {
                            let ends = take(&slots, None).expect("an end for every shard");
                            let id = ends.id();
                            let (peers, receivers) = ends.connect().await;
                            assert!(peers.send_to(id, (id, 0)).await.is_err(), "sent to itself");
                            assert!(peers.send_to(ShardId(SHARDS), (id, 0)).await.is_err());
                            let sending = glommio::spawn_local(async move {
                                for n in 0..MESSAGES {
                                    for to in (0..SHARDS).map(ShardId).filter(|to| *to != id) {
                                        peers.send_to(to, (id, n)).await.expect("delivered");
                                    }
                                }
                                peers
                            });
                            assert_eq!(receivers.len(), SHARDS - 1);
                            for (from, receiver) in receivers {
                                for n in 0..MESSAGES {
                                    assert_eq!(receiver.recv().await, Some((from, n)));
                                }
                            }
                            // Keep the senders until every shard has read everything.
                            let peers = sending.await;
                            (id, peers.senders.len())
                        })
                })
            })
            .collect();
        let mut ids: Vec<_> =
            threads.into_iter().map(|t| t.join().expect("shard thread")).collect();
        ids.sort();
        let expected: Vec<_> = (0..SHARDS).map(|id| (ShardId(id), SHARDS)).collect();
        assert_eq!(ids, expected);
        assert!(take(&slots, Some(0)).is_none());
    }
}
