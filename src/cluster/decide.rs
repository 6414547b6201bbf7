//! What the active controller decides: from an event (a broker registering, heartbeating or
//! shutting down, a topic asked for, time passing) and the metadata image, the records to
//! commit. No I/O and no clock: the caller passes `now`, commits the records through the
//! metadata log and applies them; a seeded simulation drives it (`simulation.rs`).
//!
//! Membership follows KRaft: a registration gets a new broker epoch and starts fenced; the
//! broker's first heartbeat under that epoch unfences it; a broker silent for the session
//! timeout, or shutting down, is fenced, and fencing first moves its leaderships to other live
//! in-sync replicas (bumping leader and partition epochs) and takes it out of in-sync sets it
//! shares, in the same batch of records. A partition whose in-sync replicas are all fenced keeps
//! its last one and no leader, and gets one back when that replica returns (no unclean
//! election). The heartbeat times are the controller's own memory, not the log's: a controller
//! that takes over gives every broker a full session before fencing it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::cluster::metadata::{Endpoints, MetadataImage, MetadataRecord, PartitionState, TopicId};
use crate::cluster::placement::{self, Candidate};
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// What happened, as the controller hears it.
#[derive(Clone, Debug)]
pub enum Event {
    Register {
        node: NodeId,
        rack: Option<String>,
        endpoints: Endpoints,
    },
    Heartbeat {
        node: NodeId,
        broker_epoch: u64,
    },
    ControlledShutdown {
        node: NodeId,
        broker_epoch: u64,
    },
    /// `id` comes from the caller (random in the broker, seeded in tests).
    CreateTopic {
        name: String,
        id: TopicId,
        partitions: u32,
        replication_factor: usize,
    },
    DeleteTopic {
        name: String,
    },
    Tick,
}

/// Why an event was refused, in terms a client or broker can be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Heartbeat or shutdown from a broker that is not registered under that epoch (an older
    /// incarnation): it must register again.
    StaleBrokerEpoch {
        node: NodeId,
        broker_epoch: u64,
    },
    TopicExists(String),
    UnknownTopic(String),
    /// Kafka's INVALID_REPLICATION_FACTOR: more replicas than live brokers, or none.
    InvalidReplicationFactor {
        asked: usize,
        live: usize,
    },
    InvalidPartitions(u32),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleBrokerEpoch { node, broker_epoch } => {
                write!(f, "broker {node} is not registered under epoch {broker_epoch}")
            }
            Self::TopicExists(name) => write!(f, "topic {name} exists"),
            Self::UnknownTopic(name) => write!(f, "no topic {name}"),
            Self::InvalidReplicationFactor { asked, live } => {
                write!(f, "replication factor {asked} with {live} live brokers")
            }
            Self::InvalidPartitions(count) => write!(f, "{count} partitions"),
        }
    }
}

/// The active controller's decisions, and the little it remembers between them.
pub struct Controller {
    session_timeout: Duration,
    /// When each broker was last heard from (registration or heartbeat).
    last_heard: BTreeMap<NodeId, Instant>,
    /// Where the next topic's first leader goes, so topics do not all start on one broker.
    next_start: usize,
}

impl Controller {
    pub fn new(session_timeout: Duration) -> Self {
        Self { session_timeout, last_heard: BTreeMap::new(), next_start: 0 }
    }

    /// The records `event` leads to, in the order they must be committed and applied.
    pub fn decide(
        &mut self,
        image: &MetadataImage,
        event: Event,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        match event {
            Event::Register { node, rack, endpoints } => {
                self.last_heard.insert(node, now);
                let mut records = without_leadership(image, node);
                let broker_epoch = image.last_broker_epoch + 1;
                records.push(MetadataRecord::RegisterBroker {
                    node,
                    broker_epoch,
                    rack,
                    endpoints,
                });
                Ok(records)
            }
            Event::Heartbeat { node, broker_epoch } => {
                let broker = registered(image, node, broker_epoch)?;
                self.last_heard.insert(node, now);
                if !broker.fenced {
                    return Ok(Vec::new());
                }
                let mut records = vec![MetadataRecord::UnfenceBroker { node, broker_epoch }];
                records.extend(leaderless_led_by(image, node));
                Ok(records)
            }
            Event::ControlledShutdown { node, broker_epoch } => {
                let broker = registered(image, node, broker_epoch)?;
                self.last_heard.remove(&node);
                Ok(fence(image, node, broker.broker_epoch, broker.fenced))
            }
            Event::CreateTopic { name, id, partitions, replication_factor } => {
                self.create_topic(image, name, id, partitions, replication_factor)
            }
            Event::DeleteTopic { name } => match image.topic_ids.get(&name) {
                Some(id) => Ok(vec![MetadataRecord::DeleteTopic { id: *id }]),
                None => Err(Refusal::UnknownTopic(name)),
            },
            Event::Tick => Ok(self.fence_the_silent(image, now)),
        }
    }

    fn create_topic(
        &mut self,
        image: &MetadataImage,
        name: String,
        id: TopicId,
        partitions: u32,
        replication_factor: usize,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if image.topic_ids.contains_key(&name) {
            return Err(Refusal::TopicExists(name));
        }
        if partitions == 0 {
            return Err(Refusal::InvalidPartitions(partitions));
        }
        let live: Vec<Candidate> = image
            .live_brokers()
            .map(|(node, info)| Candidate { node: *node, rack: info.rack.clone() })
            .collect();
        let placed =
            placement::place(&live, partitions, replication_factor, self.next_start).ok_or(
                Refusal::InvalidReplicationFactor { asked: replication_factor, live: live.len() },
            )?;
        self.next_start = self.next_start.wrapping_add(1);
        let mut records = vec![MetadataRecord::CreateTopic { name, id }];
        for (partition, replicas) in placed.into_iter().enumerate() {
            let leader = replicas[0];
            // Until partition data is replicated, only the leader holds the records: it alone
            // is in sync.
            let state = PartitionState {
                replicas,
                isr: vec![leader],
                leader: Some(leader),
                leader_epoch: LeaderEpoch(0),
                partition_epoch: 0,
            };
            let partition = PartitionId(partition as u32);
            records.push(MetadataRecord::PartitionState { topic: id, partition, state });
        }
        Ok(records)
    }

    /// Fences every live broker not heard from for the session timeout. One it has never heard
    /// from (this controller just took over) gets a full session from now.
    fn fence_the_silent(&mut self, image: &MetadataImage, now: Instant) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        let mut fenced_here = Vec::new();
        for (node, info) in image.live_brokers() {
            let heard = *self.last_heard.entry(*node).or_insert(now);
            if now.saturating_duration_since(heard) >= self.session_timeout {
                fenced_here.push((*node, info.broker_epoch));
            }
        }
        // One broker at a time against the image as the earlier ones left it.
        let mut image = image.clone();
        for (node, broker_epoch) in fenced_here {
            for record in fence(&image, node, broker_epoch, false) {
                let applied = image.apply(&record);
                assert!(
                    applied.is_ok(),
                    "fencing broker {node} made a record its image refuses: {applied:?}"
                );
                records.push(record);
            }
        }
        records
    }
}

/// The broker registered under `broker_epoch`, or why not.
fn registered(
    image: &MetadataImage,
    node: NodeId,
    broker_epoch: u64,
) -> Result<&crate::cluster::metadata::BrokerInfo, Refusal> {
    image
        .brokers
        .get(&node)
        .filter(|b| b.broker_epoch == broker_epoch)
        .ok_or(Refusal::StaleBrokerEpoch { node, broker_epoch })
}

/// Takes `node`'s leaderships away and then fences it (nothing if it is fenced already).
fn fence(
    image: &MetadataImage,
    node: NodeId,
    broker_epoch: u64,
    already_fenced: bool,
) -> Vec<MetadataRecord> {
    if already_fenced {
        return Vec::new();
    }
    let mut records = without_leadership(image, node);
    records.push(MetadataRecord::FenceBroker { node, broker_epoch });
    records
}

/// The partition changes that leave `node` leading nothing and out of every in-sync set it
/// shares: a partition it leads gets the first other live in-sync replica, in replica order, as
/// leader (or none), with a new leader epoch.
fn without_leadership(image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
    let live = |n: &NodeId| *n != node && image.brokers.get(n).is_some_and(|b| !b.fenced);
    let mut records = Vec::new();
    for (topic, partition, state) in image.partitions() {
        let leads = state.leader == Some(node);
        let shares = state.isr.contains(&node) && state.isr.len() > 1;
        if !leads && !shares {
            continue;
        }
        let mut next = state.clone();
        if shares {
            next.isr.retain(|r| *r != node);
        }
        if leads {
            next.leader = state.replicas.iter().copied().find(|r| next.isr.contains(r) && live(r));
            next.leader_epoch = LeaderEpoch(state.leader_epoch.0 + 1);
        }
        next.partition_epoch += 1;
        records.push(MetadataRecord::PartitionState { topic, partition, state: next });
    }
    records
}

/// The partition changes that make `node`, just unfenced, the leader of the partitions that
/// have none and keep it in sync.
fn leaderless_led_by(image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
    image
        .partitions()
        .filter(|(_, _, state)| state.leader.is_none() && state.isr.contains(&node))
        .map(|(topic, partition, state)| {
            let next = PartitionState {
                leader: Some(node),
                leader_epoch: LeaderEpoch(state.leader_epoch.0 + 1),
                partition_epoch: state.partition_epoch + 1,
                ..state.clone()
            };
            MetadataRecord::PartitionState { topic, partition, state: next }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(9);

    fn endpoints() -> Endpoints {
        Endpoints { kafka: ("127.0.0.1".into(), 9092), native: ("127.0.0.1".into(), 9192) }
    }

    /// Decides and applies, as the controller and every broker would.
    fn commit(
        controller: &mut Controller,
        image: &mut MetadataImage,
        event: Event,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let records = controller.decide(image, event, now)?;
        for record in &records {
            image.apply(record).expect("the controller's records apply");
        }
        Ok(records)
    }

    /// Registers and unfences brokers `1..=count`; returns their epochs.
    fn cluster(count: i32, now: Instant) -> (Controller, MetadataImage, Vec<u64>) {
        let (mut controller, mut image) = (Controller::new(TIMEOUT), MetadataImage::default());
        let mut epochs = Vec::new();
        for n in 1..=count {
            let register = Event::Register { node: NodeId(n), rack: None, endpoints: endpoints() };
            commit(&mut controller, &mut image, register, now).expect("registered");
            let broker_epoch = image.brokers[&NodeId(n)].broker_epoch;
            let beat = Event::Heartbeat { node: NodeId(n), broker_epoch };
            commit(&mut controller, &mut image, beat, now).expect("heartbeat");
            epochs.push(broker_epoch);
        }
        (controller, image, epochs)
    }

    fn create(name: &str, partitions: u32, replication_factor: usize) -> Event {
        let id = TopicId(name.len() as u128 + 1);
        Event::CreateTopic { name: name.into(), id, partitions, replication_factor }
    }

    #[test]
    fn a_broker_starts_fenced_and_an_old_incarnation_is_refused() {
        let now = Instant::now();
        let (mut controller, mut image) = (Controller::new(TIMEOUT), MetadataImage::default());
        let register = Event::Register { node: NodeId(1), rack: None, endpoints: endpoints() };
        commit(&mut controller, &mut image, register.clone(), now).expect("registered");
        let first = image.brokers[&NodeId(1)].broker_epoch;
        assert!(image.brokers[&NodeId(1)].fenced, "fenced until its first heartbeat");
        commit(
            &mut controller,
            &mut image,
            Event::Heartbeat { node: NodeId(1), broker_epoch: first },
            now,
        )
        .expect("heartbeat");
        assert!(!image.brokers[&NodeId(1)].fenced);
        commit(&mut controller, &mut image, register, now).expect("registered again");
        let second = image.brokers[&NodeId(1)].broker_epoch;
        assert!(second > first);
        let stale = controller.decide(
            &image,
            Event::Heartbeat { node: NodeId(1), broker_epoch: first },
            now,
        );
        assert_eq!(stale, Err(Refusal::StaleBrokerEpoch { node: NodeId(1), broker_epoch: first }));
    }

    #[test]
    fn a_silent_leader_is_fenced_after_its_session_and_its_partitions_wait_for_it() {
        let start = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, start);
        commit(&mut controller, &mut image, create("t", 3, 3), start).expect("created");
        let leaders: Vec<_> = image.partitions().map(|(_, _, p)| p.leader).collect();
        assert_eq!(leaders, [Some(NodeId(1)), Some(NodeId(2)), Some(NodeId(3))]);
        // Brokers 2 and 3 beat; broker 1 is silent.
        let later = start + TIMEOUT - Duration::from_millis(1);
        for n in [2, 3] {
            let beat = Event::Heartbeat { node: NodeId(n), broker_epoch: epochs[n as usize - 1] };
            commit(&mut controller, &mut image, beat, later).expect("heartbeat");
        }
        commit(&mut controller, &mut image, Event::Tick, later).expect("tick");
        assert!(!image.brokers[&NodeId(1)].fenced, "not before its session is over");
        commit(&mut controller, &mut image, Event::Tick, start + TIMEOUT).expect("tick");
        assert!(image.brokers[&NodeId(1)].fenced);
        let (_, _, first) = image.partitions().next().expect("partition 0");
        // Only the leader is in sync until data is replicated: no other replica may lead.
        assert_eq!(
            (first.leader, first.leader_epoch, first.partition_epoch),
            (None, LeaderEpoch(1), 1)
        );
        // It comes back under a new epoch and leads again, in another leader epoch.
        let register = Event::Register { node: NodeId(1), rack: None, endpoints: endpoints() };
        let back = start + TIMEOUT * 2;
        commit(&mut controller, &mut image, register, back).expect("registered");
        let broker_epoch = image.brokers[&NodeId(1)].broker_epoch;
        commit(
            &mut controller,
            &mut image,
            Event::Heartbeat { node: NodeId(1), broker_epoch },
            back,
        )
        .expect("heartbeat");
        let (_, _, first) = image.partitions().next().expect("partition 0");
        assert_eq!((first.leader, first.leader_epoch), (Some(NodeId(1)), LeaderEpoch(2)));
    }

    #[test]
    fn a_new_controller_gives_every_broker_a_full_session() {
        let start = Instant::now();
        let (_, mut image, _) = cluster(2, start);
        let mut taken_over = Controller::new(TIMEOUT);
        let late = start + TIMEOUT * 3;
        commit(&mut taken_over, &mut image, Event::Tick, late).expect("tick");
        assert!(image.live_brokers().count() == 2, "heard from nobody yet: a session from now");
        commit(&mut taken_over, &mut image, Event::Tick, late + TIMEOUT).expect("tick");
        assert_eq!(image.live_brokers().count(), 0);
    }

    #[test]
    fn topics_need_enough_live_brokers_and_a_free_name() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(2, now);
        let refused = controller.decide(&image, create("t", 1, 3), now);
        assert_eq!(refused, Err(Refusal::InvalidReplicationFactor { asked: 3, live: 2 }));
        commit(&mut controller, &mut image, create("t", 2, 2), now).expect("created");
        assert_eq!(
            controller.decide(&image, create("t", 1, 1), now),
            Err(Refusal::TopicExists("t".into()))
        );
        let shutdown = Event::ControlledShutdown { node: NodeId(2), broker_epoch: epochs[1] };
        commit(&mut controller, &mut image, shutdown, now).expect("shut down");
        let refused = controller.decide(&image, create("u", 1, 2), now);
        assert_eq!(refused, Err(Refusal::InvalidReplicationFactor { asked: 2, live: 1 }));
        commit(&mut controller, &mut image, Event::DeleteTopic { name: "t".into() }, now)
            .expect("deleted");
        assert!(image.topics.is_empty() && image.topic_ids.is_empty());
    }
}
