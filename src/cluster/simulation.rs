//! Seeded simulations of the controller.
//!
//! **Decisions** (`Run`): a cluster of three to five brokers. At seeded moments brokers heartbeat
//! (or miss a beat), die without a word, restart as new processes (and register again, refused
//! while their old session lives), shut down cleanly; topics are created with seeded partition
//! counts and replication factors and deleted; the active controller fails over (a new one with
//! no memory of heartbeats); time passes and the controller ticks. Every decision must apply as
//! one batch to the controller's image, and after every one:
//! - no unclean election: a new leader comes from the partition's previous in-sync set, and the
//!   in-sync set grows only at its leader's request, and only by live replicas;
//! - a broker fenced while live was silent for the whole session timeout, or asked;
//! - followers that applied the same prefix of the log hold the controller's image at it (each
//!   lags by a seeded amount).
//!
//! Then every broker comes back and heartbeats, and the cluster must settle: every broker live
//! and every partition led.
//!
//! **The quorum** (`QuorumRun`): three voters running real Raft (`quorum.rs`), below.
//!
//! `SPATE_TEST_SEED=<n>` replays a seed; `SPATE_CLUSTER_SIMULATION_SEEDS=<n>` runs more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::decide::{
    Controller, Event, IsrRequest, NewPartitions, NewTopic, PartitionLimits, Reassignment, Refusal,
    PRODUCER_ID_BLOCK,
};
use super::metadata::{
    self, ClusterId, Endpoints, MetadataImage, MetadataRecord, PartitionState, Registration,
    TopicId, CLUSTER_PROTOCOL_VERSION,
};
use super::quorum::{Durable, Persist, QuorumError, Voter};
use super::raft_wire::StoredSnapshot;
use crate::config::{ConfigChange, TopicConfig};
use crate::testing::TestRng;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

const SESSION_TIMEOUT: Duration = Duration::from_millis(9_000);
const MIN_INSYNC: &str = "min.insync.replicas";
/// The environment variable that runs more seeds (the long form).
const SEEDS_MORE: &str = "SPATE_CLUSTER_SIMULATION_SEEDS";

struct Broker {
    node: NodeId,
    /// This process's id; a restart is a new process.
    incarnation: u64,
    /// Its data directory's id: a restart usually keeps it, and now and then comes on a new
    /// one (a replaced disk), which is another broker to the controller.
    directory: u128,
    /// Its registration's epoch while it runs; `None` while it is down.
    epoch: Option<u64>,
    /// When it last sent a heartbeat the controller took.
    last_beat: Option<Instant>,
    /// It asked to be fenced (a controlled shutdown).
    shutting_down: bool,
    /// Its heartbeat connection closed, or a new controller took over from the one beside it:
    /// it may be fenced before its session is over, until it beats again.
    presumed_gone: bool,
    /// The connection it beats over now; a restart or a reconnect takes a new one.
    connection: u64,
    /// Its disk refuses writes: its heartbeats say so.
    storage_failing: bool,
}

struct Run {
    seed: u64,
    rng: TestRng,
    now: Instant,
    controller: Controller,
    image: MetadataImage,
    /// Every committed batch, with the image after it.
    log: Vec<(Vec<MetadataRecord>, MetadataImage)>,
    /// Followers: how much of the log each has applied, and its image.
    followers: Vec<(usize, MetadataImage)>,
    brokers: Vec<Broker>,
    next_topic: u128,
    events: BTreeMap<&'static str, u64>,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let count = 3 + rng.below(3) as i32;
        let brokers = (1..=count)
            .map(|n| Broker {
                node: NodeId(n),
                incarnation: 0,
                directory: 0,
                epoch: None,
                last_beat: None,
                shutting_down: false,
                presumed_gone: false,
                connection: u64::from(n.unsigned_abs()) << 32,
                storage_failing: false,
            })
            .collect();
        let followers = (0..2).map(|_| (0, MetadataImage::default())).collect();
        Self {
            seed,
            rng,
            now: Instant::now(),
            controller: Controller::new(SESSION_TIMEOUT, ClusterId(u128::from(seed)), limits()),
            image: MetadataImage::default(),
            log: Vec::new(),
            followers,
            brokers,
            next_topic: 0,
            events: BTreeMap::new(),
        }
    }

    fn event(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    fn decide(&mut self, event: Event) -> Result<(), Refusal> {
        let asked_to_grow = matches!(event, Event::AlterPartition(_));
        let batch = self.controller.decide(&self.image, event, self.now)?;
        let before = self.image.clone();
        if let Err(e) = self.image.apply_batch(&batch) {
            panic!("seed {}: the controller's own batch {batch:?}: {e}", self.seed);
        }
        batch.iter().for_each(|record| self.check_fencing(&before, record));
        self.check_elections(&before, asked_to_grow);
        self.log.push((batch, self.image.clone()));
        Ok(())
    }

    /// A broker whose storage fails, heard while another broker is live, is fenced: it leads
    /// nothing and shares no in-sync set.
    fn check_out_of_the_way(&mut self, node: NodeId) {
        self.event("heartbeat of a broker whose storage fails");
        assert!(
            self.image.brokers.get(&node).is_some_and(|b| b.fenced),
            "seed {}: broker {node}'s storage fails, and it is not fenced",
            self.seed
        );
        for (topic, partition, state) in self.image.partitions() {
            let shares = state.isr.contains(&node) && state.isr.len() > 1;
            assert!(
                state.leader != Some(node) && !shares,
                "seed {}: broker {node}'s storage fails, and {topic}-{partition} is {state:?}",
                self.seed
            );
        }
    }

    /// A broker fenced while it was live must have been silent for the session timeout, unless
    /// it asked (a controlled shutdown, or a heartbeat saying its storage fails).
    fn check_fencing(&self, before: &MetadataImage, record: &MetadataRecord) {
        let MetadataRecord::FenceBroker { node, .. } = record else { return };
        let was_live = before.brokers.get(node).is_some_and(|b| !b.fenced);
        let broker = self.brokers.iter().find(|b| b.node == *node);
        let beat = broker.and_then(|b| b.last_beat);
        let silent_long_enough = beat.is_none_or(|at| self.now - at >= SESSION_TIMEOUT);
        let asked_or_gone =
            broker.is_some_and(|b| b.shutting_down || b.presumed_gone || b.storage_failing);
        assert!(
            !was_live || silent_long_enough || asked_or_gone,
            "seed {}: broker {node} fenced {:?} after its last heartbeat",
            self.seed,
            beat.map(|at| self.now - at)
        );
    }

    /// No unclean election: a partition's new leader was in its in-sync set before, or
    /// eligible (KIP-966), and the in-sync set gains members only when its leader asked, and
    /// only live ones, or when an eligible replica is elected (it alone). Replicas are eligible
    /// only while the in-sync set is below `min.insync.replicas`.
    fn check_elections(&self, before: &MetadataImage, asked_to_grow: bool) {
        for (topic, partition, state) in self.image.partitions() {
            let Some(old) = before.topics.get(&topic).and_then(|t| t.partitions.get(&partition))
            else {
                continue;
            };
            // (An eligible replica elected may be fenced in the same batch, leaving it in sync
            // alone and the partition without a leader; a reassignment completed by its
            // leader's in-sync change, which removed the leader, hands over to a replica that
            // change may have brought in.)
            let completed_away = old.is_reassigning()
                && !state.is_reassigning()
                && old.leader.is_some_and(|l| !state.replicas.contains(&l));
            let from_isr = state.leader.is_none_or(|l| {
                let joined_at_ask = asked_to_grow && completed_away && state.isr.contains(&l);
                state.leader == old.leader
                    || old.isr.contains(&l)
                    || old.elr.contains(&l)
                    || joined_at_ask
            });
            let mut joined = state.isr.iter().filter(|r| !old.isr.contains(r));
            let shrinks = joined.all(|r| {
                let elected_eligible = old.elr.contains(r) && state.isr == [*r];
                elected_eligible || (asked_to_grow && before.is_live(r))
            });
            // The topic's min.insync.replicas, else the cluster-wide dynamic one, else the
            // default: 2 once it is replicated.
            let cluster = self.image.broker_configs.get(&None);
            let setting = (self.image.topics.get(&topic))
                .and_then(|t| t.config.get(MIN_INSYNC))
                .or_else(|| cluster?.get(MIN_INSYNC))
                .and_then(|value| value.parse().ok());
            let min_insync = TopicConfig::min_insync_of(setting, state.settled_replica_count());
            let eligible_only_below = state.elr.is_empty() || state.isr.len() < min_insync;
            // A reassignment drops an original in-sync replica only once every replica it
            // keeps is in sync (KIP-455); a replica being added may be dropped any time.
            let mut dropped_in_sync =
                (old.isr.iter()).filter(|r| !state.replicas.contains(r) && !old.adding.contains(r));
            let moved_in_sync = dropped_in_sync.next().is_none()
                || state.replicas.iter().all(|r| state.isr.contains(r));
            assert!(
                from_isr && shrinks && eligible_only_below && moved_in_sync,
                "seed {}: {topic}-{partition} went from {old:?} to {state:?}",
                self.seed
            );
        }
    }

    /// Each follower applies a seeded part of what it has not applied yet, and must then hold
    /// the image the controller held at that point of the log.
    fn followers_catch_up(&mut self, all: bool) {
        for f in 0..self.followers.len() {
            let (applied, _) = self.followers[f];
            let behind = self.log.len() - applied;
            let take = if all { behind } else { self.rng.below(behind as u64 + 1) as usize };
            let (applied, image) = &mut self.followers[f];
            for (batch, _) in &self.log[*applied..*applied + take] {
                if let Err(e) = image.apply_batch(batch) {
                    panic!("seed {}: follower {f} refused {batch:?}: {e}", self.seed);
                }
            }
            *applied += take;
            if *applied > 0 {
                let expected = &self.log[*applied - 1].1;
                assert!(
                    image == expected,
                    "seed {}: follower {f} diverged at {applied}",
                    self.seed
                );
            }
        }
    }

    fn endpoints(node: NodeId) -> Endpoints {
        let port = 10_000 + node.0 as u16;
        Endpoints { kafka: ("127.0.0.1".into(), port), native: ("127.0.0.1".into(), port + 1000) }
    }

    /// The broker's process registers; on another data directory, refused while its previous
    /// process's session lives.
    fn register(&mut self, b: usize) -> bool {
        let broker = &self.brokers[b];
        let node = broker.node;
        let registration = Registration {
            node,
            incarnation: broker.incarnation,
            directory: broker.directory,
            rack: Some(format!("rack-{}", node.0 % 2)),
            endpoints: Self::endpoints(node),
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            min_insync_replicas: None,
        };
        match self.decide(Event::Register { registration, cluster_id: None }) {
            Ok(()) => {
                self.brokers[b].epoch = self.image.brokers.get(&node).map(|i| i.broker_epoch);
                self.brokers[b].last_beat = Some(self.now);
                true
            }
            Err(Refusal::DuplicateRegistration(_)) => {
                self.event("registration refused while the old one lives");
                false
            }
            Err(e) => panic!("seed {}: registering {node}: {e}", self.seed),
        }
    }

    fn heartbeat(&mut self, b: usize) {
        let (node, Some(broker_epoch)) = (self.brokers[b].node, self.brokers[b].epoch) else {
            return;
        };
        let via = Some(self.brokers[b].connection);
        let storage_failing = self.brokers[b].storage_failing;
        // Whether the controller must fence it: against the image before the heartbeat.
        let to_fence =
            storage_failing && self.image.live_brokers().any(|(other, _)| *other != node);
        match self.decide(Event::Heartbeat { node, broker_epoch, via, storage_failing }) {
            Ok(()) => {
                self.brokers[b].last_beat = Some(self.now);
                self.brokers[b].presumed_gone = false;
                if to_fence {
                    self.check_out_of_the_way(node);
                }
            }
            // Fenced and its registration taken over meanwhile? Only its own restart does that.
            Err(e) => panic!("seed {}: heartbeat of {node}: {e}", self.seed),
        }
    }

    /// Creates a topic with a manual assignment: each partition on distinct registered brokers
    /// picked at random, live or not. Honoured exactly when every partition has a live replica
    /// to lead it (and the name is free).
    fn create_assigned_topic(&mut self) {
        let registered: Vec<NodeId> = self.image.brokers.keys().copied().collect();
        if registered.is_empty() {
            return;
        }
        let replication_factor = 1 + self.rng.below(registered.len() as u64) as usize;
        let partitions = 1 + self.rng.below(4) as usize;
        let mut assignment = Vec::with_capacity(partitions);
        for _ in 0..partitions {
            let mut pool = registered.clone();
            let mut replicas = Vec::with_capacity(replication_factor);
            for _ in 0..replication_factor {
                replicas.push(pool.remove(self.rng.below(pool.len() as u64) as usize));
            }
            assignment.push(replicas);
        }
        let live = |n: &NodeId| self.image.is_live(n);
        let leadable = assignment.iter().all(|replicas| replicas.iter().any(live));
        self.next_topic += 1;
        let name = format!("t{}", self.rng.below(8));
        let exists = self.image.topic_ids.contains_key(&name);
        let mut topic = new_topic(name.clone(), partitions as u32, 0);
        topic.assignment = Some(assignment.clone());
        match self.decide(Event::CreateTopic { topic, id: TopicId(self.next_topic) }) {
            Ok(()) => {
                assert!(leadable && !exists, "seed {}: {assignment:?} honoured", self.seed);
                let id = self.image.topic_ids[&name];
                let placed: Vec<Vec<NodeId>> = self.image.topics[&id]
                    .partitions
                    .values()
                    .map(|p| p.replicas.clone())
                    .collect();
                assert_eq!(placed, assignment, "seed {}: placed otherwise", self.seed);
                // Each led by its first live replica, every live replica in sync.
                let image = &self.image;
                let live = |n: &NodeId| image.is_live(n);
                for state in image.topics[&id].partitions.values() {
                    let first_live = state.replicas.iter().copied().find(|n| live(n));
                    let in_sync: Vec<NodeId> =
                        state.replicas.iter().copied().filter(|n| live(n)).collect();
                    let in_sync = Some(in_sync);
                    assert!(
                        state.leader.is_some() && state.leader == first_live,
                        "seed {}: {state:?}",
                        self.seed
                    );
                    assert_eq!(Some(state.isr.clone()), in_sync, "seed {}", self.seed);
                }
                self.event("topic created by assignment");
            }
            Err(Refusal::TopicExists(_)) if exists => {}
            Err(Refusal::InvalidAssignment(_)) if !leadable => {
                self.event("assignment refused: a partition with no live replica")
            }
            Err(e) => panic!("seed {}: {assignment:?}: {e}", self.seed),
        }
    }

    /// Grows a topic, when the one picked exists.
    fn add_partitions(&mut self) {
        let name = format!("t{}", self.rng.below(8));
        let Some(topic) = self.image.topic_ids.get(&name).and_then(|id| self.image.topics.get(id))
        else {
            return;
        };
        let count = topic.partitions.len() as u32 + 1 + self.rng.below(3) as u32;
        let grow = NewPartitions { name, count, assignment: None };
        match self.decide(Event::CreatePartitions(grow)) {
            Ok(()) => self.event("partitions added"),
            Err(Refusal::InvalidReplicationFactor { .. }) => {
                self.event("partitions refused: too few live brokers")
            }
            Err(e) => panic!("seed {}: adding partitions: {e}", self.seed),
        }
    }

    /// A replicated partition's leader asks for another in-sync set (some of its replicas and
    /// itself), now and then against a partition epoch another change has passed, in another
    /// leader epoch (a deposed leader, or one ahead of the controller), or from a replica that
    /// does not lead it. Taken exactly when the rules say: the leader, its epochs, and every
    /// replica that joins live.
    fn alter_isr(&mut self) {
        let replicated: Vec<(TopicId, PartitionId, PartitionState)> = (self.image.partitions())
            .filter(|(_, _, s)| s.replicas.len() > 1 && s.leader.is_some())
            .map(|(topic, partition, state)| (topic, partition, state.clone()))
            .collect();
        if replicated.is_empty() {
            return;
        }
        let pick = self.rng.below(replicated.len() as u64) as usize;
        let (topic, partition, state) = replicated[pick].clone();
        let Some(leader) = state.leader else { return };
        let others: Vec<NodeId> = (state.replicas.iter().copied())
            .filter(|r| *r != leader && self.image.brokers.get(r).is_some_and(|b| !b.shut_down))
            .collect();
        let (asker, not_leader) = match (self.rng.below(8), others.first()) {
            (0, Some(other)) => (*other, true),
            _ => (leader, false),
        };
        let Some(broker_epoch) = self.image.brokers.get(&asker).map(|b| b.broker_epoch) else {
            return;
        };
        let isr: Vec<NodeId> = (state.replicas.iter().copied())
            .filter(|r| *r == leader || self.rng.below(2) == 0)
            .collect();
        let stale = state.partition_epoch > 0 && self.rng.below(5) == 0;
        let partition_epoch = state.partition_epoch - u32::from(stale);
        let other_epoch = self.rng.below(6) == 0;
        let leader_epoch = LeaderEpoch(state.leader_epoch.0 + i32::from(other_epoch));
        let joiners_live =
            isr.iter().filter(|r| !state.isr.contains(r)).all(|r| self.image.is_live(r));
        let request = IsrRequest {
            node: asker,
            broker_epoch,
            topic,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        };
        let taken = !not_leader && !other_epoch && !stale && joiners_live;
        match self.decide(Event::AlterPartition(request)) {
            Ok(()) if taken => self.event("in-sync set changed by its leader"),
            Err(Refusal::NotLeader(_)) if not_leader => {
                self.event("in-sync change from a replica not leading refused")
            }
            Err(Refusal::FencedLeaderEpoch { .. }) if !not_leader && other_epoch => {
                self.event("in-sync change in another leader epoch refused")
            }
            Err(Refusal::StalePartitionEpoch { .. }) if !not_leader && !other_epoch && stale => {
                self.event("in-sync change against a passed epoch refused")
            }
            Err(Refusal::IneligibleReplica(_))
                if !not_leader && !other_epoch && !stale && !joiners_live =>
            {
                self.event("in-sync change with a fenced replica refused")
            }
            other => panic!("seed {}: asking for an in-sync set: {other:?}", self.seed),
        }
    }

    /// Moves a partition to seeded replicas among the registered brokers (live or not), or
    /// cancels its move. Refused exactly when the cancel finds no move, no target replica is
    /// live to lead, or the in-sync replicas would all be dropped.
    fn reassign(&mut self) {
        let partitions: Vec<(String, PartitionId, PartitionState)> = (self.image.partitions())
            .map(|(id, partition, state)| {
                (self.image.topics[&id].name.clone(), partition, state.clone())
            })
            .collect();
        if partitions.is_empty() {
            return;
        }
        let (topic, partition, state) =
            partitions[self.rng.below(partitions.len() as u64) as usize].clone();
        let target = match self.rng.below(4) {
            0 => None,
            _ => {
                let mut pool: Vec<NodeId> = self.image.brokers.keys().copied().collect();
                let count = 1 + self.rng.below(pool.len().min(3) as u64) as usize;
                Some((0..count).map(|_| pool.remove(self.rng.below(pool.len() as u64) as usize)))
                    .map(|picked| picked.collect::<Vec<_>>())
            }
        };
        let leadable = target.as_ref().is_none_or(|t| t.iter().any(|r| self.image.is_live(r)));
        // A new target keeps it and the replicas the partition had (until it completes); a
        // cancel, those it had.
        let original: Vec<NodeId> = state.original_replicas().collect();
        let kept: Vec<NodeId> = target.iter().flatten().chain(&original).copied().collect();
        let keeps_in_sync = state.isr.iter().any(|r| kept.contains(r));
        let cancel_of_none = target.is_none() && !state.is_reassigning();
        let reassignment = Reassignment { topic, partition, target: target.clone() };
        match self.decide(Event::Reassign(vec![reassignment])) {
            Ok(()) => {
                let valid = leadable && !cancel_of_none && keeps_in_sync;
                assert!(valid, "seed {}: {target:?} taken for {state:?}", self.seed);
                let event = match target {
                    Some(_) => "partition reassigned",
                    None => "reassignment cancelled",
                };
                self.event(event);
            }
            Err(Refusal::NoReassignmentInProgress(..)) if cancel_of_none => {
                self.event("cancel of no reassignment refused")
            }
            Err(Refusal::InvalidAssignment(_)) if !leadable || !keeps_in_sync => {
                self.event("reassignment refused")
            }
            other => panic!("seed {}: reassigning to {target:?}: {other:?}", self.seed),
        }
    }

    /// Changes a topic's `min.insync.replicas` (or takes its override away) and now and then
    /// its retention. Refused only for a topic that does not exist; taken whole, and checked in
    /// `check_elections` (eligible replicas never outlive the value they rested on).
    fn alter_topic_config(&mut self) {
        let name = format!("t{}", self.rng.below(8));
        let min_insync = match self.rng.below(4) {
            0 => ConfigChange::Delete { key: MIN_INSYNC.into() },
            n => ConfigChange::Set { key: MIN_INSYNC.into(), value: n.to_string() },
        };
        let mut changes = vec![min_insync];
        if self.rng.below(2) == 0 {
            let retention = ConfigChange::Set { key: "retention.ms".into(), value: "60000".into() };
            changes.push(retention);
        }
        let exists = self.image.topic_ids.contains_key(&name);
        let replace = self.rng.below(4) == 0;
        let event =
            Event::AlterTopicConfig { name: name.clone(), changes: changes.clone(), replace };
        match self.decide(event) {
            Ok(()) => {
                assert!(exists, "seed {}: configured {name}, which does not exist", self.seed);
                let config = &self.image.topic_named(&name).map(|(_, t)| t.config.clone());
                let expected = match &changes[0] {
                    ConfigChange::Set { value, .. } => Some(value.as_str()),
                    _ => None,
                };
                let got = config.as_ref().and_then(|c| c.get(MIN_INSYNC)).map(String::as_str);
                assert_eq!(got, expected, "seed {}: {name} configured {config:?}", self.seed);
                self.event("topic configured");
            }
            Err(Refusal::UnknownTopic(_)) if !exists => {}
            other => panic!("seed {}: configuring {name}: {other:?}", self.seed),
        }
    }

    /// Changes the cluster-wide `min.insync.replicas` (or takes it away), as a dynamic broker
    /// setting: taken whole, and checked in `check_elections` as a topic's own.
    fn alter_cluster_defaults(&mut self) {
        let change = match self.rng.below(4) {
            0 => ConfigChange::Delete { key: MIN_INSYNC.into() },
            n => ConfigChange::Set { key: MIN_INSYNC.into(), value: n.to_string() },
        };
        let event =
            Event::AlterBrokerConfig { node: None, changes: vec![change.clone()], replace: false };
        if let Err(refused) = self.decide(event) {
            panic!("seed {}: {change:?} as a cluster-wide setting: {refused:?}", self.seed);
        }
        let got = self.image.broker_configs.get(&None).and_then(|c| c.get(MIN_INSYNC));
        let expected = match &change {
            ConfigChange::Set { value, .. } => Some(value),
            _ => None,
        };
        assert_eq!(got, expected, "seed {}: {change:?}", self.seed);
        self.event("cluster-wide default changed");
    }

    fn step(&mut self) {
        let b = self.rng.below(self.brokers.len() as u64) as usize;
        match self.rng.below(21) {
            14 | 20 => self.reassign(),
            15 if self.rng.below(3) == 0 => self.alter_cluster_defaults(),
            15 => self.alter_topic_config(),
            0 if self.brokers[b].epoch.is_some() => {
                self.event("broker killed");
                self.brokers[b].epoch = None;
            }
            1 if self.brokers[b].epoch.is_none() => {
                self.event("broker restarted");
                self.brokers[b].incarnation += 1;
                self.brokers[b].connection += 1;
                if self.rng.below(4) == 0 {
                    self.event("broker restarted on a new data directory");
                    self.brokers[b].directory += 1;
                }
                self.register(b);
            }
            2 => {
                if let (node, Some(broker_epoch)) = (self.brokers[b].node, self.brokers[b].epoch) {
                    self.event("controlled shutdown");
                    self.brokers[b].shutting_down = true;
                    let stopped = self.decide(Event::ControlledShutdown { node, broker_epoch });
                    assert!(stopped.is_ok(), "seed {}: {stopped:?}", self.seed);
                    (self.brokers[b].epoch, self.brokers[b].shutting_down) = (None, false);
                }
            }
            3..=5 => {
                let live = self.image.live_brokers().count();
                let replication_factor = 1 + self.rng.below(4) as u16;
                let partitions = 1 + self.rng.below(6) as u32;
                self.next_topic += 1;
                let name = format!("t{}", self.rng.below(8));
                let id = TopicId(self.next_topic);
                let exists = self.image.topic_ids.contains_key(&name);
                let topic = new_topic(name, partitions, replication_factor);
                match self.decide(Event::CreateTopic { topic, id }) {
                    Ok(()) => self.event("topic created"),
                    Err(Refusal::TopicExists(_)) if exists => {}
                    Err(Refusal::InvalidReplicationFactor { .. })
                        if usize::from(replication_factor) > live =>
                    {
                        self.event("replication factor refused")
                    }
                    Err(e) => panic!("seed {}: creating a topic: {e}", self.seed),
                }
            }
            6 => {
                let name = format!("t{}", self.rng.below(8));
                if self.decide(Event::DeleteTopic { name }).is_ok() {
                    self.event("topic deleted");
                }
            }
            9 => self.add_partitions(),
            16 => {
                let failing = !self.brokers[b].storage_failing;
                self.event(match failing {
                    true => "storage failing",
                    false => "storage takes writes again",
                });
                self.brokers[b].storage_failing = failing;
            }
            11 | 12 => self.alter_isr(),
            10 => self.create_assigned_topic(),
            8 => {
                if let (node, Some(broker_epoch)) = (self.brokers[b].node, self.brokers[b].epoch) {
                    let before = self.image.next_producer_id;
                    let allocated = self.decide(Event::AllocateProducerIds { node, broker_epoch });
                    assert!(allocated.is_ok(), "seed {}: {allocated:?}", self.seed);
                    // Blocks follow each other: no id is handed out twice.
                    assert_eq!(self.image.next_producer_id, before + PRODUCER_ID_BLOCK);
                    self.event("producer ids allocated");
                }
            }
            7 => {
                self.event("controller failover");
                self.controller = Controller::new(
                    SESSION_TIMEOUT,
                    ClusterId(u128::from(self.rng.below(u64::MAX))),
                    limits(),
                );
                // Now and then the old controller's broker went silent with it (down or not).
                if self.rng.below(2) == 0 {
                    self.event("the old controller's broker presumed silent");
                    self.brokers[b].presumed_gone = true;
                    self.controller.presume_silent(self.brokers[b].node, self.now);
                }
            }
            13 => {
                // A heartbeat connection closes: the one it beats over (it died, or its link
                // broke), which may fence it; or one it has already left for another, which
                // must not.
                if let (node, Some(broker_epoch)) = (self.brokers[b].node, self.brokers[b].epoch) {
                    let current = self.rng.below(2) == 0;
                    let via = match current {
                        true => self.brokers[b].connection,
                        false => self.brokers[b].connection.wrapping_sub(1),
                    };
                    if current {
                        self.event("heartbeat connection lost");
                        self.brokers[b].presumed_gone = true;
                        self.brokers[b].connection += 1;
                    } else {
                        self.event("an old heartbeat connection closed");
                    }
                    let lost = self.decide(Event::HeartbeatsLost { node, broker_epoch, via });
                    assert!(lost.is_ok(), "seed {}: {lost:?}", self.seed);
                }
            }
            _ => {}
        }
        // Live brokers beat, now and then missing one.
        for b in 0..self.brokers.len() {
            if self.rng.below(4) != 0 {
                self.heartbeat(b);
            }
        }
        self.now += Duration::from_millis(self.rng.below(4_000));
        let ticked = self.decide(Event::Tick);
        assert!(ticked.is_ok(), "seed {}: {ticked:?}", self.seed);
        self.followers_catch_up(false);
    }

    fn run(mut self, steps: u64) -> BTreeMap<&'static str, u64> {
        for b in 0..self.brokers.len() {
            self.register(b);
            self.heartbeat(b);
        }
        for _ in 0..steps {
            self.step();
        }
        // Every broker comes back (as a new process, once its old session is over) with a disk
        // that takes writes, and beats: the cluster settles.
        for broker in &mut self.brokers {
            broker.storage_failing = false;
        }
        for _ in 0..10 {
            for b in 0..self.brokers.len() {
                if self.brokers[b].epoch.is_none() {
                    self.brokers[b].incarnation += 1;
                    self.register(b);
                }
                self.heartbeat(b);
            }
            self.now += Duration::from_millis(2_000);
            let ticked = self.decide(Event::Tick);
            assert!(ticked.is_ok(), "seed {}: {ticked:?}", self.seed);
        }
        self.followers_catch_up(true);
        let fenced: Vec<_> = self.image.brokers.iter().filter(|(_, b)| b.fenced).collect();
        assert!(fenced.is_empty(), "seed {}: still fenced: {fenced:?}", self.seed);
        for (topic, partition, state) in self.image.partitions() {
            assert!(
                state.leader.is_some(),
                "seed {}: {topic}-{partition} has no leader",
                self.seed
            );
        }
        self.events.insert("decisions", self.log.len() as u64);
        self.events
    }
}

#[test]
fn the_controller_never_elects_uncleanly_and_the_cluster_settles() {
    let run = |seed| Run::new(seed).run(200);
    let totals = crate::testing::run_seeds("cluster simulation", SEEDS_MORE, 300, run);
    let expected = [
        "broker killed",
        "broker restarted",
        "storage failing",
        "storage takes writes again",
        "heartbeat of a broker whose storage fails",
        "controlled shutdown",
        "controller failover",
        "decisions",
        "registration refused while the old one lives",
        "broker restarted on a new data directory",
        "replication factor refused",
        "topic created",
        "topic deleted",
        "partitions added",
        "topic created by assignment",
        "assignment refused: a partition with no live replica",
        "producer ids allocated",
        "in-sync set changed by its leader",
        "in-sync change against a passed epoch refused",
        "in-sync change from a replica not leading refused",
        "in-sync change in another leader epoch refused",
        "in-sync change with a fenced replica refused",
        "partition reassigned",
        "reassignment cancelled",
        "cancel of no reassignment refused",
        "topic configured",
        "cluster-wide default changed",
    ];
    crate::testing::assert_every_event_ran(&totals, &expected);
}

/// Three controller voters running real Raft (`quorum.rs`) over a seeded network that delays,
/// drops and reorders messages and now and then cuts one voter off. Whichever voter leads
/// decides (with a controller of its own, which forgets heartbeats at every change of leader:
/// brokers register, restart, beat, shut down, topics come and go, time passes) and proposes
/// each decision as one entry; every voter decodes and applies what commits, a batch at a time.
/// Every voter snapshots its image every few entries (Raft drops what a snapshot covers), so a
/// voter cut off or down for a while is sent the leader's snapshot. After every round: one
/// leader per term, and voters that applied the log up to the same entry hold the same image.
/// Voters crash: between rounds, right after a snapshot, or in the middle of making a drain
/// durable (the disk keeps a leader's snapshot or not, then a seeded prefix of the new entries,
/// and the new state only after all of them, as the broker writes them), losing everything else
/// of that drain; they restart from their disk: the snapshot, then the log after it. Then the
/// network heals and every voter must hold the same image.
struct QuorumRun {
    seed: u64,
    rng: TestRng,
    now: Instant,
    voters: Vec<QuorumVoter>,
    /// Messages in flight: (the step they arrive at, to, message).
    network: Vec<(u64, usize, raft::eraftpb::Message)>,
    step: u64,
    /// The voter cut off until the step given, if any.
    cut_off: Option<(usize, u64)>,
    leaders: BTreeMap<u64, u64>,
    /// The leader's controller, and the term it decides for.
    controller: Option<(u64, Controller)>,
    /// Each broker's process (incarnation) and, once its registration is proposed, its epoch.
    brokers: Vec<(NodeId, u64, Option<u64>)>,
    next_topic: u128,
    /// The image at each entry of the log, as the first voter to apply it held it.
    images: BTreeMap<u64, MetadataImage>,
    events: BTreeMap<&'static str, u64>,
}

struct QuorumVoter {
    id: u64,
    raft: super::quorum::Voter,
    /// What survives its crash.
    disk: Durable,
    image: MetadataImage,
    /// The last entry applied to `image`.
    applied: u64,
    /// Entries applied since its last snapshot, and how many it takes one after.
    since_snapshot: u64,
    snapshot_every: u64,
}

impl QuorumVoter {
    fn start(id: u64, disk: Durable, snapshot_every: u64) -> Self {
        let (image, applied) = match &disk.snapshot {
            Some(snapshot) => {
                let image = MetadataImage::decode_snapshot(&snapshot.data)
                    .unwrap_or_else(|e| panic!("voter {id}'s snapshot: {e}"));
                (image, snapshot.index)
            }
            None => (MetadataImage::default(), 0),
        };
        let raft = Voter::restore(id, &QUORUM, disk.clone())
            .unwrap_or_else(|e| panic!("voter {id} restarting from its disk: {e}"));
        Self { id, raft, disk, image, applied, since_snapshot: 0, snapshot_every }
    }

    fn restart(&mut self) {
        *self = Self::start(self.id, std::mem::take(&mut self.disk), self.snapshot_every);
    }

    /// Snapshots the image it applied: durable first, then Raft drops what it covers.
    fn snapshot(&mut self) {
        let Some(term) = self.raft.term_of(self.applied) else { return };
        let data = self.image.encode_snapshot();
        let snapshot = StoredSnapshot { index: self.applied, term, voters: QUORUM.to_vec(), data };
        self.disk.compact(snapshot.clone());
        if let Err(e) = self.raft.compact(snapshot) {
            panic!("voter {} snapshotting at entry {}: {e}", self.id, self.applied);
        }
        self.since_snapshot = 0;
    }
}

const QUORUM: [u64; 3] = [1, 2, 3];

impl QuorumRun {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let voters = (QUORUM.iter())
            .map(|id| QuorumVoter::start(*id, Durable::default(), 2 + rng.below(8)))
            .collect();
        let brokers = (1..=3).map(|n| (NodeId(n), 0, None)).collect();
        Self {
            seed,
            rng,
            now: Instant::now(),
            voters,
            network: Vec::new(),
            step: 0,
            cut_off: None,
            leaders: BTreeMap::new(),
            controller: None,
            brokers,
            next_topic: 0,
            images: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Voter `v` holds the image of the log up to entry `index`: the same as every other voter
    /// that got there.
    fn check_image_at(&mut self, v: usize, index: u64) {
        let image = &self.voters[v].image;
        let first = self.images.entry(index).or_insert_with(|| image.clone());
        assert!(
            first == image,
            "seed {}: voter {} holds another image at entry {index}",
            self.seed,
            v + 1
        );
    }

    fn reachable(&self, voter: usize) -> bool {
        self.cut_off.is_none_or(|(cut, until)| cut != voter || self.step >= until)
    }

    /// One round: every voter ticks, due messages arrive, the leader decides, every voter
    /// drains and applies.
    fn round(&mut self, chaos: bool) {
        self.step += 1;
        self.now += Duration::from_millis(100);
        for voter in &mut self.voters {
            voter.raft.tick();
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.network).into_iter().partition(|(at, _, _)| *at <= self.step);
        self.network = later;
        for (_, to, message) in due {
            if self.reachable(to) && self.reachable(message.from as usize - 1) {
                // A message for another term or quorum is raft-rs's to refuse; ours refuse only
                // what no correct voter sends.
                if let Err(QuorumError::Damaged(why)) = self.voters[to].raft.step(message) {
                    panic!("seed {}: voter {} refused a correct message: {why}", self.seed, to + 1);
                }
            }
        }
        if chaos && self.cut_off.is_none() && self.rng.below(40) == 0 {
            let voter = self.rng.below(3) as usize;
            self.cut_off = Some((voter, self.step + 5 + self.rng.below(40)));
            *self.events.entry("voter cut off").or_default() += 1;
        }
        if self.cut_off.is_some_and(|(_, until)| self.step >= until) {
            self.cut_off = None;
        }
        // Once the network heals nothing new is decided: the voters must converge.
        if chaos {
            self.lead();
        }
        for v in 0..self.voters.len() {
            if chaos && self.rng.below(300) == 0 {
                self.voters[v].restart();
                *self.events.entry("voter restarted").or_default() += 1;
            }
            let drained = match self.voters[v].raft.drain() {
                Ok(drained) => drained,
                Err(e) => panic!("seed {}: voter {} drained: {e}", self.seed, v + 1),
            };
            let crash_odds = if drained.persist.snapshot.is_some() { 4 } else { 150 };
            if chaos && !drained.persist.is_empty() && self.rng.below(crash_odds) == 0 {
                self.crash_while_persisting(v, drained.persist);
                continue;
            }
            // The broker steps messages that arrive while a drain is being persisted: so here,
            // now and then, with the next round's messages for this voter.
            if chaos && !drained.persist.is_empty() && self.rng.below(4) == 0 {
                self.deliver_early(v);
            }
            self.voters[v].disk.apply(&drained.persist);
            if let Some(snapshot) = &drained.persist.snapshot {
                let voter = &mut self.voters[v];
                assert!(
                    snapshot.index > voter.applied,
                    "seed {}: voter {} installs a snapshot to {} after applying {}",
                    self.seed,
                    v + 1,
                    snapshot.index,
                    voter.applied
                );
                voter.image = MetadataImage::decode_snapshot(&snapshot.data)
                    .unwrap_or_else(|e| panic!("seed {}: a leader's snapshot: {e}", self.seed));
                (voter.applied, voter.since_snapshot) = (snapshot.index, 0);
                self.check_image_at(v, snapshot.index);
                *self.events.entry("snapshot installed from the leader").or_default() += 1;
            }
            // Right after granting a vote is where a voter that forgets its vote would vote
            // twice in one term: restart there often.
            let voted = drained.messages.iter().any(|m| {
                m.get_msg_type() == raft::eraftpb::MessageType::MsgRequestVoteResponse && !m.reject
            });
            for message in drained.messages {
                let dropped = chaos && self.rng.below(10) == 0;
                let delay = if chaos { self.rng.below(4) } else { 0 };
                let to = message.to as usize - 1;
                if !dropped {
                    self.network.push((self.step + 1 + delay, to, message));
                }
            }
            for committed in drained.committed {
                let voter = &mut self.voters[v];
                assert_eq!(
                    committed.index,
                    voter.applied + 1,
                    "seed {}: voter {} applies entries out of order",
                    self.seed,
                    v + 1
                );
                if !committed.data.is_empty() {
                    let batch = metadata::decode_batch(&committed.data)
                        .unwrap_or_else(|e| panic!("seed {}: a committed entry: {e}", self.seed));
                    if let Err(e) = voter.image.apply_batch(&batch) {
                        panic!("seed {}: voter {} refused {batch:?}: {e}", self.seed, v + 1);
                    }
                }
                (voter.applied, voter.since_snapshot) = (committed.index, voter.since_snapshot + 1);
                self.check_image_at(v, committed.index);
            }
            if self.voters[v].since_snapshot >= self.voters[v].snapshot_every {
                self.voters[v].snapshot();
                *self.events.entry("snapshot taken").or_default() += 1;
                if chaos && self.rng.below(10) == 0 {
                    self.voters[v].restart();
                    *self.events.entry("voter restarted after a snapshot").or_default() += 1;
                }
            }
            if chaos && voted && self.rng.below(3) == 0 {
                self.voters[v].restart();
                *self.events.entry("voter restarted after voting").or_default() += 1;
            }
        }
        self.check();
    }

    /// Steps into voter `v` the messages for it that would arrive next round.
    fn deliver_early(&mut self, v: usize) {
        let (early, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, to, _)| *to == v && *at <= self.step + 1);
        self.network = later;
        for (_, _, message) in early {
            if self.reachable(v) && self.reachable(message.from as usize - 1) {
                if let Err(QuorumError::Damaged(why)) = self.voters[v].raft.step(message) {
                    panic!("seed {}: voter {} refused a correct message: {why}", self.seed, v + 1);
                }
                *self.events.entry("messages stepped while persisting").or_default() += 1;
            }
        }
    }

    /// Voter `v` dies while making `persist` durable: its disk keeps a prefix of the entries
    /// (a torn write ends at an entry, recovery cuts the rest) and the state only after all of
    /// them; nothing else of the drain happened. A crash right after the truncation that makes
    /// room for overwriting entries keeps none of them but loses the entries cut.
    fn crash_while_persisting(&mut self, v: usize, mut persist: Persist) {
        if let Some(snapshot) = persist.snapshot.take() {
            // Written first; the log after it is replaced only then. A crash between keeps the
            // log after the snapshot where it continues it (as the broker's disk reads back).
            if self.rng.below(3) == 0 {
                persist.entries.clear();
                persist.state = None;
            } else {
                let disk = &mut self.voters[v].disk;
                let at = disk.entries.iter().position(|e| e.index == snapshot.index);
                let continues = at.filter(|at| disk.entries[*at].term == snapshot.term);
                let same = disk.snapshot_index() == snapshot.index;
                match continues {
                    Some(at) => drop(disk.entries.drain(..=at)),
                    None if same => {}
                    None => disk.entries.clear(),
                }
                disk.snapshot = Some(snapshot);
                if self.rng.below(2) == 0 {
                    persist.entries.clear();
                    persist.state = None;
                }
                *self.events.entry("voter crashed while installing a snapshot").or_default() += 1;
            }
        }
        let kept = self.rng.below(persist.entries.len() as u64 + 1) as usize;
        let all_kept = kept == persist.entries.len();
        if kept == 0 && self.rng.below(2) == 0 {
            if let Some(first) = persist.entries.first() {
                let disk = &mut self.voters[v].disk;
                let kept = first.index.saturating_sub(1).saturating_sub(disk.snapshot_index());
                disk.entries.truncate(usize::try_from(kept).unwrap_or(usize::MAX));
            }
        }
        persist.entries.truncate(kept);
        if !all_kept || self.rng.below(2) == 0 {
            persist.state = None;
        }
        let voter = &mut self.voters[v];
        voter.disk.apply(&persist);
        voter.restart();
        *self.events.entry("voter crashed while persisting").or_default() += 1;
    }

    /// The leader, once it has applied its whole log, decides one event and proposes it.
    fn lead(&mut self) {
        let Some(v) = self.voters.iter().position(|v| v.raft.is_leader() && v.raft.caught_up())
        else {
            return;
        };
        let term = self.voters[v].raft.term();
        if self.controller.as_ref().is_none_or(|(t, _)| *t != term) {
            let controller =
                Controller::new(SESSION_TIMEOUT, ClusterId(u128::from(term)), limits());
            self.controller = Some((term, controller));
            *self.events.entry("controller elected").or_default() += 1;
        }
        let b = self.rng.below(self.brokers.len() as u64) as usize;
        let (node, incarnation, epoch) = self.brokers[b];
        let image = &self.voters[v].image;
        let registered = image.brokers.get(&node).map(|info| info.broker_epoch);
        let event = match (self.rng.below(9), epoch.filter(|e| Some(*e) == registered)) {
            (0, _) | (_, None) => {
                // A restart now and then: a new process.
                let incarnation = incarnation + self.rng.below(2);
                self.brokers[b].1 = incarnation;
                // Restarts on the same directory: a later process takes over at once.
                let registration = Registration {
                    node,
                    incarnation,
                    directory: node.0 as u128,
                    rack: None,
                    endpoints: Run::endpoints(node),
                    protocol_version: CLUSTER_PROTOCOL_VERSION,
                    min_insync_replicas: None,
                };
                Event::Register { registration, cluster_id: None }
            }
            (1, _) => {
                self.next_topic += 1;
                let name = format!("t{}", self.rng.below(5));
                let partitions = 1 + self.rng.below(4) as u32;
                let replication_factor = 1 + self.rng.below(3) as u16;
                let id = TopicId(self.next_topic);
                Event::CreateTopic { topic: new_topic(name, partitions, replication_factor), id }
            }
            (2, _) => Event::DeleteTopic { name: format!("t{}", self.rng.below(5)) },
            (3 | 4, _) => Event::Tick,
            (5, Some(broker_epoch)) => {
                self.brokers[b].2 = None;
                Event::ControlledShutdown { node, broker_epoch }
            }
            (_, Some(broker_epoch)) => {
                Event::Heartbeat { node, broker_epoch, via: None, storage_failing: false }
            }
        };
        let Some((_, controller)) = self.controller.as_mut() else { return };
        let Ok(batch) = controller.decide(image, event, self.now) else { return };
        if batch.is_empty() {
            return;
        }
        for record in &batch {
            if let MetadataRecord::RegisterBroker { broker_epoch, registration } = record {
                let node = &registration.node;
                // The broker learns its epoch from the answer, which comes at commit; here it
                // simply uses the epoch the leader assigned.
                if let Some(broker) = self.brokers.iter_mut().find(|(n, _, _)| n == node) {
                    broker.2 = Some(*broker_epoch);
                }
            }
        }
        if self.voters[v].raft.propose(metadata::encode_batch(&batch)).is_ok() {
            *self.events.entry("decisions proposed").or_default() += 1;
        }
    }

    fn check(&mut self) {
        for (v, voter) in self.voters.iter().enumerate() {
            if voter.raft.is_leader() {
                let id = v as u64 + 1;
                let term = voter.raft.term();
                let first = *self.leaders.entry(term).or_insert(id);
                assert_eq!(first, id, "seed {}: two leaders in term {term}", self.seed);
            }
        }
    }

    fn run(mut self, rounds: u64) -> BTreeMap<&'static str, u64> {
        for _ in 0..rounds {
            self.round(true);
        }
        // Healed and quiet: every voter catches up with the same log.
        self.cut_off = None;
        for _ in 0..200 {
            self.round(false);
        }
        let applied = self.voters[0].applied;
        for (v, voter) in self.voters.iter().enumerate() {
            assert_eq!(voter.applied, applied, "seed {}: voter {} behind", self.seed, v + 1);
            assert!(voter.image == self.voters[0].image, "seed {}: images differ", self.seed);
        }
        assert!(applied > 0, "seed {}: nothing committed", self.seed);
        self.events.insert("entries committed", applied);
        self.events
    }
}

#[test]
fn controller_voters_agree_on_the_metadata_through_a_lossy_network() {
    let run = |seed| QuorumRun::new(seed).run(400);
    let totals = crate::testing::run_seeds("quorum simulation", SEEDS_MORE, 200, run);
    let expected = [
        "controller elected",
        "decisions proposed",
        "entries committed",
        "voter cut off",
        "voter restarted",
        "voter restarted after voting",
        "voter crashed while persisting",
        "messages stepped while persisting",
        "snapshot taken",
        "snapshot installed from the leader",
        "voter restarted after a snapshot",
        "voter crashed while installing a snapshot",
    ];
    crate::testing::assert_every_event_ran(&totals, &expected);
}

/// Limits no run reaches.
fn limits() -> PartitionLimits {
    PartitionLimits {
        per_broker: 100_000,
        internal_topic: "__consumer_offsets".into(),
        internal_partitions: 16,
        internal_replication_factor: 1,
    }
}

fn new_topic(name: String, partitions: u32, replication_factor: u16) -> NewTopic {
    NewTopic { name, partitions, replication_factor, assignment: None, config: Vec::new() }
}
