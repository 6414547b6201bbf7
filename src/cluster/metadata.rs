//! The cluster metadata: the records the controller commits, and the image every broker builds
//! by applying them in order (KRaft's metadata log and `MetadataImage`).
//!
//! The records are the whole truth: brokers with their epochs, topics with their ids, and for
//! every partition its replicas, in-sync replicas, leader, leader epoch and partition epoch. A
//! broker that has applied a prefix of the log has exactly the image of that prefix, whatever it
//! did before: [`MetadataImage::apply`] reads nothing else. A record that would break an
//! invariant (an epoch going back, a leader outside its in-sync set, a partition of an unknown
//! topic) is refused with the reason and leaves the image as it was: the log is input like any
//! other, and a bug in the controller must not turn into a panic on every broker.

use std::collections::BTreeMap;
use std::fmt;

use rkyv::{rancor, Archive, Deserialize, Serialize};

use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// The format of a metadata record in the log: its first byte. A build reads every version up
/// to its own and refuses a newer one by name, never as damage.
const RECORD_VERSION: u8 = 1;

/// A topic's id (Kafka's topic UUID): a topic deleted and created again under its name gets a
/// new one, so a broker that was away recognises the new topic and drops the old one's logs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub struct TopicId(pub u128);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Where a broker listens, as it registered.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Endpoints {
    /// For Kafka clients.
    pub kafka: (String, u16),
    /// For Spate's native clients and for other brokers.
    pub native: (String, u16),
}

/// One change to the cluster metadata, as the controller commits it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker (re)joined; `broker_epoch` is new for every registration, so messages from an
    /// earlier incarnation of the broker can be told apart and refused. It starts fenced.
    RegisterBroker {
        node: NodeId,
        broker_epoch: u64,
        rack: Option<String>,
        endpoints: Endpoints,
    },
    /// The broker leads nothing and is in no in-sync set from here on (it stopped heartbeating,
    /// or shut down).
    FenceBroker {
        node: NodeId,
        broker_epoch: u64,
    },
    /// The broker heartbeats again under `broker_epoch`: it may be given leadership.
    UnfenceBroker {
        node: NodeId,
        broker_epoch: u64,
    },
    CreateTopic {
        name: String,
        id: TopicId,
    },
    /// A partition's whole state: written when its topic is created and at every change of
    /// leader or in-sync set, with `partition_epoch` raised by one each time and `leader_epoch`
    /// raised whenever the leader changes (KIP-101, KIP-497).
    PartitionState {
        topic: TopicId,
        partition: PartitionId,
        state: PartitionState,
    },
    DeleteTopic {
        id: TopicId,
    },
}

/// Who holds a partition, and who leads it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionState {
    /// In preference order: the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// In-sync replicas: a subset of `replicas`; the leader is one of them.
    pub isr: Vec<NodeId>,
    /// `None`: no replica can lead (every in-sync replica is fenced).
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub broker_epoch: u64,
    pub rack: Option<String>,
    pub endpoints: Endpoints,
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: BTreeMap<PartitionId, PartitionState>,
}

/// The metadata as of some prefix of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<TopicId, TopicInfo>,
    pub topic_ids: BTreeMap<String, TopicId>,
    /// The highest broker epoch registered so far: the next registration gets a higher one.
    pub last_broker_epoch: u64,
}

impl MetadataRecord {
    /// The record as the metadata log stores it: the format version, then the archive.
    pub fn encode(&self) -> Vec<u8> {
        // Archiving owned values into memory cannot fail.
        let archive = rkyv::to_bytes::<rancor::Error>(self).expect("archiving a metadata record");
        let mut bytes = Vec::with_capacity(1 + archive.len());
        bytes.push(RECORD_VERSION);
        bytes.extend_from_slice(&archive);
        bytes
    }

    /// A record read back from the log (input like any other: validated, never trusted).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some((&version, archive)) = bytes.split_first() else {
            return Err("an empty metadata record".into());
        };
        if version != RECORD_VERSION {
            return Err(format!("metadata record version {version}: this build reads 1"));
        }
        // The archive needs its alignment, which a log entry's bytes do not promise.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
        aligned.extend_from_slice(archive);
        rkyv::from_bytes::<Self, rancor::Error>(&aligned).map_err(|e| e.to_string())
    }
}

/// Why a record was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRecord(pub String);

impl fmt::Display for RefusedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata record refused: {}", self.0)
    }
}

impl MetadataImage {
    /// Applies one committed record, or refuses it (saying why) and changes nothing.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), RefusedRecord> {
        let refuse = |why: String| Err(RefusedRecord(why));
        match record {
            MetadataRecord::RegisterBroker { node, broker_epoch, rack, endpoints } => {
                if *broker_epoch <= self.last_broker_epoch {
                    return refuse(format!(
                        "broker {node} registers with epoch {broker_epoch}, not above {}",
                        self.last_broker_epoch
                    ));
                }
                // A new registration starts fenced: its old incarnation must lead nothing.
                if self.holds_leadership(*node) {
                    return refuse(format!("broker {node} registers again while it still leads"));
                }
                self.last_broker_epoch = *broker_epoch;
                let info = BrokerInfo {
                    broker_epoch: *broker_epoch,
                    rack: rack.clone(),
                    endpoints: endpoints.clone(),
                    fenced: true,
                };
                self.brokers.insert(*node, info);
            }
            MetadataRecord::FenceBroker { node, broker_epoch }
            | MetadataRecord::UnfenceBroker { node, broker_epoch } => {
                let fence = matches!(record, MetadataRecord::FenceBroker { .. });
                let leads = self.holds_leadership(*node);
                let Some(broker) = self.brokers.get_mut(node) else {
                    return refuse(format!("broker {node} is not registered"));
                };
                if broker.broker_epoch != *broker_epoch {
                    return refuse(format!(
                        "broker {node} has epoch {}, the record names {broker_epoch}",
                        broker.broker_epoch
                    ));
                }
                if fence && leads {
                    return refuse(format!(
                        "broker {node} still leads or is in a shared in-sync set"
                    ));
                }
                broker.fenced = fence;
            }
            MetadataRecord::CreateTopic { name, id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(id) {
                    return refuse(format!("topic {name} ({id}) exists"));
                }
                let info = TopicInfo { name: name.clone(), partitions: BTreeMap::new() };
                self.topics.insert(*id, info);
                self.topic_ids.insert(name.clone(), *id);
            }
            MetadataRecord::PartitionState { topic, partition, state } => {
                self.check_partition_state(*topic, *partition, state).or_else(refuse)?;
                if let Some(info) = self.topics.get_mut(topic) {
                    info.partitions.insert(*partition, state.clone());
                }
            }
            MetadataRecord::DeleteTopic { id } => {
                let Some(info) = self.topics.remove(id) else {
                    return refuse(format!("no topic {id} to delete"));
                };
                self.topic_ids.remove(&info.name);
            }
        }
        Ok(())
    }

    /// Every partition: (topic id, partition, state).
    pub fn partitions(&self) -> impl Iterator<Item = (TopicId, PartitionId, &PartitionState)> {
        self.topics.iter().flat_map(|(id, topic)| {
            topic.partitions.iter().map(move |(partition, state)| (*id, *partition, state))
        })
    }

    /// Whether `node` leads a partition or shares an in-sync set: what fencing it must undo
    /// first. (A fenced broker may stay the last member of an in-sync set: the partition then
    /// has no leader until it, or another replica that catches up, comes back.)
    pub fn holds_leadership(&self, node: NodeId) -> bool {
        self.partitions()
            .any(|(_, _, p)| p.leader == Some(node) || (p.isr.contains(&node) && p.isr.len() > 1))
    }

    pub fn live_brokers(&self) -> impl Iterator<Item = (&NodeId, &BrokerInfo)> {
        self.brokers.iter().filter(|(_, b)| !b.fenced)
    }

    /// The invariants a partition's state keeps from record to record.
    fn check_partition_state(
        &self,
        topic: TopicId,
        partition: PartitionId,
        state: &PartitionState,
    ) -> Result<(), String> {
        let Some(info) = self.topics.get(&topic) else {
            return Err(format!("partition {partition} of unknown topic {topic}"));
        };
        let mut distinct = state.replicas.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != state.replicas.len() || state.replicas.is_empty() {
            return Err(format!("{}-{partition}: replicas {:?}", info.name, state.replicas));
        }
        if let Some(stray) = state.replicas.iter().find(|r| !self.brokers.contains_key(r)) {
            return Err(format!("{}-{partition}: replica {stray} is not registered", info.name));
        }
        if state.isr.is_empty() || state.isr.iter().any(|r| !state.replicas.contains(r)) {
            return Err(format!(
                "{}-{partition}: in-sync replicas {:?} not within replicas {:?}",
                info.name, state.isr, state.replicas
            ));
        }
        if let Some(leader) = state.leader {
            let live = self.brokers.get(&leader).is_some_and(|b| !b.fenced);
            if !state.isr.contains(&leader) || !live {
                return Err(format!(
                    "{}-{partition}: leader {leader} is not a live in-sync replica {:?}",
                    info.name, state.isr
                ));
            }
        }
        if let Some(before) = info.partitions.get(&partition) {
            let epochs_grow = state.partition_epoch > before.partition_epoch
                && state.leader_epoch >= before.leader_epoch;
            let new_leader_new_epoch =
                state.leader == before.leader || state.leader_epoch > before.leader_epoch;
            if !epochs_grow || !new_leader_new_epoch {
                return Err(format!(
                    "{}-{partition}: epochs go from leader {:?} partition {} to leader {:?} \
                     partition {} with leader {:?} then {:?}",
                    info.name,
                    before.leader_epoch,
                    before.partition_epoch,
                    state.leader_epoch,
                    state.partition_epoch,
                    before.leader,
                    state.leader
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints { kafka: ("h".into(), 1), native: ("h".into(), 2) }
    }

    fn state(leader: i32, leader_epoch: i32, partition_epoch: u32) -> PartitionState {
        PartitionState {
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
            leader: Some(NodeId(leader)),
            leader_epoch: LeaderEpoch(leader_epoch),
            partition_epoch,
        }
    }

    /// Two live brokers and topic `t` with partition 0 led by broker 1 in epoch 0.
    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        for (n, epoch) in [(1, 1), (2, 2)] {
            let node = NodeId(n);
            let register = MetadataRecord::RegisterBroker {
                node,
                broker_epoch: epoch,
                rack: None,
                endpoints: endpoints(),
            };
            image.apply(&register).expect("registered");
            let unfence = MetadataRecord::UnfenceBroker { node, broker_epoch: epoch };
            image.apply(&unfence).expect("unfenced");
        }
        image.apply(&MetadataRecord::CreateTopic { name: "t".into(), id: TopicId(7) }).expect("t");
        let partition = PartitionId(0);
        let first =
            MetadataRecord::PartitionState { topic: TopicId(7), partition, state: state(1, 0, 0) };
        image.apply(&first).expect("partition");
        image
    }

    #[test]
    fn records_that_break_an_invariant_are_refused_and_change_nothing() {
        let base = image();
        let change = |state| MetadataRecord::PartitionState {
            topic: TopicId(7),
            partition: PartitionId(0),
            state,
        };
        let refused = [
            // A new leader under the same leader epoch.
            change(state(2, 0, 1)),
            // The partition epoch not moving.
            change(state(1, 0, 0)),
            // A leader epoch going back.
            change(state(1, -1, 1)),
            // A leader outside the in-sync set.
            change(PartitionState { isr: vec![NodeId(2)], ..state(1, 1, 1) }),
            // A replica never registered.
            change(PartitionState { replicas: vec![NodeId(1), NodeId(9)], ..state(1, 0, 1) }),
            // A partition of no topic.
            MetadataRecord::PartitionState {
                topic: TopicId(8),
                partition: PartitionId(0),
                state: state(1, 0, 0),
            },
            // Fencing a broker that still leads.
            MetadataRecord::FenceBroker { node: NodeId(1), broker_epoch: 1 },
            // An epoch from another registration.
            MetadataRecord::UnfenceBroker { node: NodeId(2), broker_epoch: 1 },
            // A broker epoch that does not grow.
            MetadataRecord::RegisterBroker {
                node: NodeId(3),
                broker_epoch: 2,
                rack: None,
                endpoints: endpoints(),
            },
            MetadataRecord::CreateTopic { name: "t".into(), id: TopicId(9) },
            MetadataRecord::DeleteTopic { id: TopicId(8) },
        ];
        for record in refused {
            let mut image = base.clone();
            assert!(image.apply(&record).is_err(), "{record:?} applied");
            assert_eq!(image, base, "{record:?} changed the image");
        }
        let mut image = base.clone();
        image.apply(&change(state(2, 1, 1))).expect("a new leader in a new epoch");
    }
}
