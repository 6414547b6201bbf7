//! A seeded simulation of the controller's decisions over a cluster of three to five brokers.
//!
//! At seeded moments brokers heartbeat (or miss a beat), die without a word, restart (and
//! register again), shut down cleanly; topics are created with seeded partition counts and
//! replication factors and deleted; the active controller fails over (a new one with no memory
//! of heartbeats); time passes and the controller ticks. Every committed record must apply to
//! the controller's image, and after every step:
//! - no two leaders ever held one partition under one leader epoch;
//! - a broker fenced for silence was silent for the whole session timeout;
//! - followers that applied the same prefix of the log hold the same image as the controller
//!   held at that prefix (each follower lags by a seeded amount).
//!
//! Then every broker comes back and heartbeats, and the cluster must settle: every broker live
//! and every partition led. `SPATE_TEST_SEED=<n>` replays a seed;
//! `SPATE_CLUSTER_SIMULATION_SEEDS=<n>` runs more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::decide::{Controller, Event, Refusal};
use super::metadata::{Endpoints, MetadataImage, MetadataRecord, TopicId};
use crate::testing::TestRng;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

const SESSION_TIMEOUT: Duration = Duration::from_millis(9_000);
/// The environment variable that runs more seeds (the long form).
const SEEDS_MORE: &str = "SPATE_CLUSTER_SIMULATION_SEEDS";

struct Broker {
    node: NodeId,
    /// Its registration's epoch while it runs; `None` while it is down.
    epoch: Option<u64>,
    /// When it last sent a heartbeat the controller took.
    last_beat: Option<Instant>,
    /// It asked to be fenced (a controlled shutdown).
    shutting_down: bool,
}

struct Run {
    seed: u64,
    rng: TestRng,
    now: Instant,
    controller: Controller,
    image: MetadataImage,
    /// Every committed record, with the image after it.
    log: Vec<(MetadataRecord, MetadataImage)>,
    /// Followers: how much of the log each has applied, and its image.
    followers: Vec<(usize, MetadataImage)>,
    brokers: Vec<Broker>,
    /// The leader of each partition under each of its leader epochs.
    leaders: BTreeMap<(TopicId, PartitionId, LeaderEpoch), Option<NodeId>>,
    next_topic: u128,
    events: BTreeMap<&'static str, u64>,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let count = 3 + rng.below(3) as i32;
        let brokers = (1..=count)
            .map(|n| Broker { node: NodeId(n), epoch: None, last_beat: None, shutting_down: false })
            .collect();
        let followers = (0..2).map(|_| (0, MetadataImage::default())).collect();
        Self {
            seed,
            rng,
            now: Instant::now(),
            controller: Controller::new(SESSION_TIMEOUT),
            image: MetadataImage::default(),
            log: Vec::new(),
            followers,
            brokers,
            leaders: BTreeMap::new(),
            next_topic: 0,
            events: BTreeMap::new(),
        }
    }

    fn event(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    fn decide(&mut self, event: Event) -> Result<(), Refusal> {
        let records = self.controller.decide(&self.image, event, self.now)?;
        for record in records {
            let before = self.image.clone();
            if let Err(e) = self.image.apply(&record) {
                panic!("seed {}: the controller's own record {record:?}: {e}", self.seed);
            }
            self.check_fencing(&before, &record);
            self.log.push((record, self.image.clone()));
        }
        self.check_leaders();
        Ok(())
    }

    /// A broker fenced while it was live must have been silent for the session timeout, unless
    /// it asked (a controlled shutdown) or registered again.
    fn check_fencing(&self, before: &MetadataImage, record: &MetadataRecord) {
        let MetadataRecord::FenceBroker { node, .. } = record else { return };
        let was_live = before.brokers.get(node).is_some_and(|b| !b.fenced);
        let broker = self.brokers.iter().find(|b| b.node == *node);
        let beat = broker.and_then(|b| b.last_beat);
        let silent_long_enough = beat.is_none_or(|at| self.now - at >= SESSION_TIMEOUT);
        assert!(
            !was_live || silent_long_enough || broker.is_some_and(|b| b.shutting_down),
            "seed {}: broker {node} fenced {:?} after its last heartbeat",
            self.seed,
            beat.map(|at| self.now - at)
        );
    }

    fn check_leaders(&mut self) {
        for (topic, partition, state) in self.image.partitions() {
            let key = (topic, partition, state.leader_epoch);
            let first = *self.leaders.entry(key).or_insert(state.leader);
            assert_eq!(
                first, state.leader,
                "seed {}: {topic}-{partition} had leaders {first:?} and {:?} in epoch {:?}",
                self.seed, state.leader, state.leader_epoch
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
            for (record, _) in &self.log[*applied..*applied + take] {
                if let Err(e) = image.apply(record) {
                    panic!("seed {}: follower {f} refused {record:?}: {e}", self.seed);
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

    fn register(&mut self, b: usize) {
        let node = self.brokers[b].node;
        let rack = Some(format!("rack-{}", node.0 % 2));
        let registered =
            self.decide(Event::Register { node, rack, endpoints: Self::endpoints(node) });
        if let Err(e) = registered {
            panic!("seed {}: registering {node}: {e}", self.seed);
        }
        self.brokers[b].epoch = self.image.brokers.get(&node).map(|info| info.broker_epoch);
        self.brokers[b].last_beat = Some(self.now);
    }

    fn heartbeat(&mut self, b: usize) {
        let (node, Some(broker_epoch)) = (self.brokers[b].node, self.brokers[b].epoch) else {
            return;
        };
        match self.decide(Event::Heartbeat { node, broker_epoch }) {
            Ok(()) => self.brokers[b].last_beat = Some(self.now),
            // Fenced and registered again meanwhile? Only this broker registers itself.
            Err(e) => panic!("seed {}: heartbeat of {node}: {e}", self.seed),
        }
    }

    fn step(&mut self) {
        let b = self.rng.below(self.brokers.len() as u64) as usize;
        match self.rng.below(20) {
            0 if self.brokers[b].epoch.is_some() => {
                self.event("broker killed");
                self.brokers[b].epoch = None;
            }
            1 if self.brokers[b].epoch.is_none() => {
                self.event("broker restarted");
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
                let replication_factor = 1 + self.rng.below(4) as usize;
                let partitions = 1 + self.rng.below(6) as u32;
                self.next_topic += 1;
                let name = format!("t{}", self.rng.below(8));
                let id = TopicId(self.next_topic);
                let exists = self.image.topic_ids.contains_key(&name);
                let create = Event::CreateTopic { name, id, partitions, replication_factor };
                match self.decide(create) {
                    Ok(()) => self.event("topic created"),
                    Err(Refusal::TopicExists(_)) if exists => {}
                    Err(Refusal::InvalidReplicationFactor { .. }) if replication_factor > live => {
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
            7 => {
                self.event("controller failover");
                self.controller = Controller::new(SESSION_TIMEOUT);
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
        // Every broker comes back and beats: the cluster settles.
        for b in 0..self.brokers.len() {
            if self.brokers[b].epoch.is_none() {
                self.register(b);
            }
        }
        for _ in 0..3 {
            for b in 0..self.brokers.len() {
                self.heartbeat(b);
            }
            self.now += Duration::from_millis(1_000);
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
        self.events.insert("records", self.log.len() as u64);
        self.events
    }
}

#[test]
fn the_controller_keeps_one_leader_per_epoch_and_the_cluster_settles() {
    let run = |seed| Run::new(seed).run(200);
    let totals = crate::testing::run_seeds("cluster simulation", SEEDS_MORE, 300, run);
    assert!(totals.len() >= 7, "every kind of event ran: {totals:?}");
}

/// Three controller voters running real Raft (`quorum.rs`) over a seeded network that delays,
/// drops and reorders messages and now and then cuts one voter off. Whichever voter leads
/// decides (with a controller of its own, which forgets heartbeats at every change of leader)
/// and proposes the records; every voter decodes and applies what commits. After every step:
/// one leader per term, and the records every two voters applied are one a prefix of the
/// other's. Then the network heals and every voter must hold the same image.
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
    brokers: Vec<(NodeId, Option<u64>)>,
    next_topic: u128,
    events: BTreeMap<&'static str, u64>,
}

struct QuorumVoter {
    raft: super::quorum::Voter,
    image: MetadataImage,
    applied: Vec<MetadataRecord>,
}

impl QuorumRun {
    fn new(seed: u64) -> Self {
        let ids = [1u64, 2, 3];
        let voters = ids
            .iter()
            .map(|id| QuorumVoter {
                raft: super::quorum::Voter::new(*id, &ids).expect("a valid voter"),
                image: MetadataImage::default(),
                applied: Vec::new(),
            })
            .collect();
        let brokers = (1..=3).map(|n| (NodeId(n), None)).collect();
        Self {
            seed,
            rng: TestRng::new(seed),
            now: Instant::now(),
            voters,
            network: Vec::new(),
            step: 0,
            cut_off: None,
            leaders: BTreeMap::new(),
            controller: None,
            brokers,
            next_topic: 0,
            events: BTreeMap::new(),
        }
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
                // A message for another term or quorum is raft-rs's to refuse; it is not ours.
                let _ = self.voters[to].raft.step(message);
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
            let drained = match self.voters[v].raft.drain() {
                Ok(drained) => drained,
                Err(e) => panic!("seed {}: voter {} drained: {e}", self.seed, v + 1),
            };
            for message in drained.messages {
                let dropped = chaos && self.rng.below(10) == 0;
                let delay = if chaos { self.rng.below(4) } else { 0 };
                let to = message.to as usize - 1;
                if !dropped {
                    self.network.push((self.step + 1 + delay, to, message));
                }
            }
            for data in drained.committed {
                let record = MetadataRecord::decode(&data)
                    .unwrap_or_else(|e| panic!("seed {}: a committed record: {e}", self.seed));
                let voter = &mut self.voters[v];
                if let Err(e) = voter.image.apply(&record) {
                    panic!("seed {}: voter {} refused {record:?}: {e}", self.seed, v + 1);
                }
                voter.applied.push(record);
            }
        }
        self.check();
    }

    /// The leader, once it has applied its whole log, decides one event and proposes it.
    fn lead(&mut self) {
        let Some(v) = self.voters.iter().position(|v| v.raft.is_leader() && v.raft.caught_up())
        else {
            return;
        };
        let term = self.voters[v].raft.term();
        if self.controller.as_ref().is_none_or(|(t, _)| *t != term) {
            self.controller = Some((term, Controller::new(SESSION_TIMEOUT)));
            *self.events.entry("controller elected").or_default() += 1;
        }
        let b = self.rng.below(self.brokers.len() as u64) as usize;
        let (node, epoch) = self.brokers[b];
        let image = &self.voters[v].image;
        let registered = image.brokers.get(&node).map(|info| info.broker_epoch);
        let event = match (self.rng.below(6), epoch.filter(|e| Some(*e) == registered)) {
            (0, _) | (_, None) => {
                let endpoints = Run::endpoints(node);
                Event::Register { node, rack: None, endpoints }
            }
            (1, _) => {
                self.next_topic += 1;
                let name = format!("t{}", self.rng.below(5));
                let partitions = 1 + self.rng.below(4) as u32;
                let replication_factor = 1 + self.rng.below(3) as usize;
                let id = TopicId(self.next_topic);
                Event::CreateTopic { name, id, partitions, replication_factor }
            }
            (2, _) => Event::DeleteTopic { name: format!("t{}", self.rng.below(5)) },
            (_, Some(broker_epoch)) => Event::Heartbeat { node, broker_epoch },
        };
        let Some((_, controller)) = self.controller.as_mut() else { return };
        let Ok(records) = controller.decide(image, event, self.now) else { return };
        for record in &records {
            if let MetadataRecord::RegisterBroker { node, broker_epoch, .. } = record {
                // The broker learns its epoch from the answer, which comes at commit; here it
                // simply uses the epoch the leader assigned.
                if let Some(broker) = self.brokers.iter_mut().find(|(n, _)| n == node) {
                    broker.1 = Some(*broker_epoch);
                }
            }
            if self.voters[v].raft.propose(record.encode()).is_err() {
                return;
            }
        }
        if !records.is_empty() {
            *self.events.entry("batches proposed").or_default() += 1;
        }
    }

    fn check(&mut self) {
        for voter in &self.voters {
            if voter.raft.is_leader() {
                let id =
                    self.voters.iter().position(|v| std::ptr::eq(v, voter)).unwrap_or(0) as u64 + 1;
                let first = *self.leaders.entry(voter.raft.term()).or_insert(id);
                assert_eq!(
                    first,
                    id,
                    "seed {}: two leaders in term {}",
                    self.seed,
                    voter.raft.term()
                );
            }
        }
        for a in &self.voters {
            for b in &self.voters {
                let common = a.applied.len().min(b.applied.len());
                assert!(
                    a.applied[..common] == b.applied[..common],
                    "seed {}: two voters applied different records",
                    self.seed
                );
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
        let applied = self.voters[0].applied.len();
        for (v, voter) in self.voters.iter().enumerate() {
            assert_eq!(voter.applied.len(), applied, "seed {}: voter {} behind", self.seed, v + 1);
            assert!(voter.image == self.voters[0].image, "seed {}: images differ", self.seed);
        }
        assert!(applied > 0, "seed {}: nothing committed", self.seed);
        self.events.insert("records committed", applied as u64);
        self.events
    }
}

#[test]
fn controller_voters_agree_on_the_metadata_through_a_lossy_network() {
    let run = |seed| QuorumRun::new(seed).run(400);
    let totals = crate::testing::run_seeds("quorum simulation", SEEDS_MORE, 50, run);
    assert!(totals.len() >= 4, "every kind of event ran: {totals:?}");
}
