//! A seeded simulation of one consumer group's membership, on a clock of its own.
//!
//! Clients behave as Kafka consumers do (join offering a seeded list of assignors, the leader
//! assigns partitions round-robin over the members its join answer lists, everyone syncs and
//! heartbeats, and on an error rejoins, starts over without a member id, or stops when fenced)
//! but at seeded moments they also leave, go silent (a crash: their sessions expire), come back
//! (static members with their `group.instance.id`, some with another list of assignors, as in a
//! rolling upgrade), ask again while a join is answered, or hold back a sync. After every step
//! the answers must agree: within a generation one leader and one protocol, which every member
//! it lists offers; every member that got an answer is among the leader's members, assignments
//! reach members as the leader made them and overlap nowhere, and the generation never goes
//! back; every request is answered at most once (the test driver checks). Then everyone still
//! alive behaves, and the group must settle: stable, every live client a member of the current
//! generation, every partition owned by exactly one of them, and every request answered.
//! `SPATE_TEST_SEED=<n>` replays a seed; `SPATE_GROUP_SIMULATION_SEEDS=<n>` runs more.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::driver::Driver;
use super::state::{
    Group, GroupState, HeartbeatCall, JoinCall, JoinReply, JoinRequest, LeaveCall, SyncCall,
    SyncReply, Ticket,
};
use crate::error::ErrorKind;
use crate::testing::TestRng;

const PARTITIONS: u32 = 6;
const INITIAL_DELAY: Duration = Duration::from_millis(300);

struct Client {
    name: String,
    instance_id: Option<String>,
    /// The assignors it offers, in its order of preference (all offer "range").
    protocols: Vec<&'static str>,
    member_id: String,
    /// The generation of the last join answer, and whether this client led it, with the
    /// members it listed.
    generation: i32,
    leader_of: Option<Vec<String>>,
    /// The tickets of its join or sync waiting for an answer.
    joining: Option<Ticket>,
    syncing: Option<Ticket>,
    /// Partitions from the last sync answer, and its generation.
    owned: Option<(i32, Vec<u32>)>,
    needs_join: bool,
    silent: bool,
    fenced: bool,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    require_known_member: bool,
}

/// What the answers of one generation said, by member identity: the instance id of a static
/// member (which a restarted static member takes over under a new member id, leadership and
/// assignment included, without a new generation: KIP-345), else the member id.
#[derive(Default)]
struct GenerationSeen {
    leader: Option<String>,
    protocol: Option<String>,
    /// The leader's list of members.
    members: Option<BTreeSet<String>>,
    /// Members that got a join answer for it.
    answered: BTreeSet<String>,
    /// What the leader assigned, by member.
    assigned: Option<BTreeMap<String, Vec<u32>>>,
    /// Who got which partitions from a sync answer.
    received: BTreeMap<String, Vec<u32>>,
}

struct Run {
    seed: u64,
    rng: TestRng,
    now: Instant,
    driver: Driver,
    clients: Vec<Client>,
    seen: BTreeMap<i32, GenerationSeen>,
    /// Member id → identity, from every join answer.
    identities: BTreeMap<String, String>,
    /// Joins whose answers their clients will never read (restarted, or asked again): still
    /// answered, and still checked.
    orphans: Vec<Ticket>,
    events: BTreeMap<&'static str, u64>,
    /// Whether clients misbehave: off once the group is left to settle.
    chaos: bool,
    highest_generation: i32,
}

fn encode(partitions: &[u32]) -> Bytes {
    partitions.iter().flat_map(|p| p.to_be_bytes()).collect::<Vec<u8>>().into()
}

fn decode(assignment: &[u8]) -> Vec<u32> {
    assignment.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A seeded list of assignors: "range", and each other one at a seeded place or not at all.
fn assignors(rng: &mut TestRng) -> Vec<&'static str> {
    let mut list = vec!["range"];
    for other in ["roundrobin", "cooperative-sticky"] {
        if rng.below(2) == 0 {
            list.insert(rng.below(list.len() as u64 + 1) as usize, other);
        }
    }
    list
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let count = 2 + rng.below(4) as usize;
        let clients = (0..count)
            .map(|i| Client {
                name: format!("c{i}"),
                instance_id: (rng.below(3) == 0).then(|| format!("static-{i}")),
                protocols: assignors(&mut rng),
                member_id: String::new(),
                generation: -1,
                leader_of: None,
                joining: None,
                syncing: None,
                owned: None,
                needs_join: true,
                silent: false,
                fenced: false,
                session_timeout: Duration::from_millis(1000 + 500 * rng.below(4)),
                rebalance_timeout: Duration::from_millis(1500 + 500 * rng.below(4)),
                require_known_member: rng.below(2) == 0,
            })
            .collect();
        Self {
            seed,
            rng,
            now: Instant::now(),
            // Member ids are made from this and a count: the seed decides them too.
            driver: Driver::new(Group::new("g".into(), seed as i64, INITIAL_DELAY)),
            clients,
            seen: BTreeMap::new(),
            identities: BTreeMap::new(),
            orphans: Vec::new(),
            events: BTreeMap::new(),
            chaos: true,
            highest_generation: 0,
        }
    }

    fn trace(&self, what: &str) {
        if std::env::var_os("SPATE_SIMULATION_TRACE").is_some() {
            eprintln!(
                "seed {}: {what} (group {:?} gen {})",
                self.seed, self.driver.group.state, self.driver.group.generation
            );
        }
    }

    fn event(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    fn join(&mut self, c: usize) {
        let client = &self.clients[c];
        // A known member asking again while its rebalance completes (it lost the answer) is
        // answered at once with that generation, not with another rebalance (as Kafka does).
        let completing = self.driver.group.state == GroupState::CompletingRebalance;
        let generation = self.driver.group.generation;
        let answered = self.seen.get(&generation).is_some_and(|seen| {
            !client.member_id.is_empty()
                && seen.answered.contains(&self.identity(&client.member_id))
        });
        let repeat_of = (completing && answered).then_some(generation);
        let request = JoinRequest {
            member_id: client.member_id.clone(),
            instance_id: client.instance_id.clone(),
            client_id: client.name.clone(),
            client_host: "/127.0.0.1".into(),
            session_timeout: client.session_timeout,
            rebalance_timeout: client.rebalance_timeout,
            protocol_type: "consumer".into(),
            // Each assignor's metadata is the whole offer, for the checks to read it back.
            protocols: client
                .protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(client.protocols.join(","))))
                .collect(),
            require_known_member: client.require_known_member,
        };
        self.trace(&format!("{} joins as {:?}", client.name, client.member_id));
        let ticket = self.driver.ask(JoinCall { request }, self.now);
        let client = &mut self.clients[c];
        // A join asked again: the first one's answer still goes to its connection. Asked again
        // without a member id (a client before KIP-394), it made a second member, which
        // lingers until its session expires, as in Kafka.
        self.orphans.extend(client.joining.replace(ticket));
        client.needs_join = false;
        if let Some(generation) = repeat_of {
            let (seed, name) = (self.seed, client.name.clone());
            self.event("join repeated");
            let reply = self.driver.answer::<JoinCall>(ticket);
            let Some(reply) = reply else {
                panic!("seed {seed}: {name} asked again while its rebalance completed: no answer");
            };
            if let Ok(outcome) = &reply {
                assert_eq!(
                    outcome.generation, generation,
                    "seed {seed}: {name} asked again while its rebalance completed"
                );
            }
            self.clients[c].joining = None;
            self.joined(c, reply);
        }
    }

    fn join_refused(&mut self, c: usize, error: ErrorKind, member_id: String) {
        let seed = self.seed;
        let client = &mut self.clients[c];
        client.needs_join = true;
        match error {
            ErrorKind::MemberIdRequired => client.member_id = member_id,
            ErrorKind::UnknownMemberId => client.member_id.clear(),
            ErrorKind::FencedInstanceId => client.fenced = true,
            other => panic!("seed {seed}: {} refused a join: {other:?}", client.name),
        }
    }

    fn sync(&mut self, c: usize) {
        let client = &self.clients[c];
        let assignments = match &client.leader_of {
            Some(members) => {
                let mut by_member: BTreeMap<String, Vec<u32>> =
                    members.iter().map(|m| (m.clone(), Vec::new())).collect();
                for p in 0..PARTITIONS {
                    let member = &members[p as usize % members.len()];
                    by_member.entry(member.clone()).or_default().push(p);
                }
                let by_identity =
                    by_member.iter().map(|(m, parts)| (self.identity(m), parts.clone())).collect();
                self.seen.entry(client.generation).or_default().assigned = Some(by_identity);
                by_member.into_iter().map(|(m, parts)| (m, encode(&parts))).collect()
            }
            None => Vec::new(),
        };
        self.trace(&format!("{} syncs generation {}", client.name, client.generation));
        let (member_id, instance_id) = (client.member_id.clone(), client.instance_id.clone());
        let generation = client.generation;
        let sync = SyncCall { member_id, instance_id, generation, assignments };
        self.clients[c].syncing = Some(self.driver.ask(sync, self.now));
    }

    fn heartbeat(&mut self, c: usize) {
        let client = &self.clients[c];
        let (member_id, instance_id) = (client.member_id.clone(), client.instance_id.clone());
        let beat = HeartbeatCall { member_id, instance_id, generation: client.generation };
        if let Err(error) = self.driver.call(beat, self.now) {
            self.member_error(c, error);
        }
    }

    /// A consumer's reaction to an error on a sync, a heartbeat or a commit.
    fn member_error(&mut self, c: usize, error: ErrorKind) {
        let seed = self.seed;
        let client = &mut self.clients[c];
        client.needs_join = true;
        client.owned = None;
        match error {
            ErrorKind::RebalanceInProgress | ErrorKind::IllegalGeneration => {}
            ErrorKind::UnknownMemberId => client.member_id.clear(),
            ErrorKind::FencedInstanceId => client.fenced = true,
            other => panic!("seed {seed}: {} got {other:?}", client.name),
        }
    }

    fn leave(&mut self, c: usize) {
        let client = &mut self.clients[c];
        let who = [(client.member_id.clone(), client.instance_id.clone())];
        client.member_id.clear();
        client.needs_join = true;
        client.owned = None;
        client.leader_of = None;
        self.trace(&format!("{} leaves", self.clients[c].name));
        self.driver.call(LeaveCall { members: who.into() }, self.now);
    }

    /// Takes every answer that has come, checking each against what the others were told.
    fn collect(&mut self) {
        // Every id the group has handed out is known here before any answer names it.
        for member in self.driver.group.describe().members {
            let identity = member.instance_id.unwrap_or_else(|| member.member_id.clone());
            self.identities.insert(member.member_id, identity);
        }
        for c in 0..self.clients.len() {
            if let Some(joining) = self.clients[c].joining.take() {
                match self.driver.answer::<JoinCall>(joining) {
                    Some(Ok(outcome)) if self.chaos && self.rng.below(6) == 0 => {
                        // Answered, but the client's request timed out first: it asks again
                        // with the id it had.
                        self.event("join answer lost");
                        let identity = self.identity(&outcome.member_id);
                        let seen = self.seen.entry(outcome.generation).or_default();
                        seen.answered.insert(identity);
                        self.clients[c].needs_join = true;
                    }
                    Some(reply) => self.joined(c, reply),
                    None => self.clients[c].joining = Some(joining),
                }
            }
            if let Some(syncing) = self.clients[c].syncing.take() {
                match self.driver.answer::<SyncCall>(syncing) {
                    Some(reply) => self.synced(c, reply),
                    None => self.clients[c].syncing = Some(syncing),
                }
            }
        }
        for orphan in std::mem::take(&mut self.orphans) {
            match self.driver.answer::<JoinCall>(orphan) {
                Some(Ok(outcome)) => {
                    self.check_protocol(&outcome);
                    let identity = self.identity(&outcome.member_id);
                    self.seen.entry(outcome.generation).or_default().answered.insert(identity);
                }
                // Refused, or overtaken by the member's next request.
                Some(Err(_)) => {}
                None => self.orphans.push(orphan),
            }
        }
        self.check_generations();
    }

    fn joined(&mut self, c: usize, reply: JoinReply) {
        let seed = self.seed;
        let outcome = match reply {
            Ok(outcome) => outcome,
            Err((error, member_id)) => return self.join_refused(c, error, member_id),
        };
        self.check_protocol(&outcome);
        let offered = &self.clients[c].protocols;
        assert!(
            offered.contains(&outcome.protocol.as_str()),
            "seed {seed}: {} offered {offered:?}, generation {} chose {:?}",
            self.clients[c].name,
            outcome.generation,
            outcome.protocol
        );
        let instance = self.clients[c].instance_id.clone();
        let me = instance.unwrap_or_else(|| outcome.member_id.clone());
        self.identities.insert(outcome.member_id.clone(), me.clone());
        for member in &outcome.members {
            let identity = member.instance_id.clone().unwrap_or_else(|| member.member_id.clone());
            self.identities.insert(member.member_id.clone(), identity);
        }
        let leader = self.identity(&outcome.leader);
        let client = &mut self.clients[c];
        assert!(
            outcome.generation >= client.generation,
            "seed {seed}: {} went back from generation {} to {}",
            client.name,
            client.generation,
            outcome.generation
        );
        client.member_id = outcome.member_id.clone();
        client.generation = outcome.generation;
        client.owned = None;
        let is_leader = outcome.leader == outcome.member_id;
        let members: Vec<String> = outcome.members.iter().map(|m| m.member_id.clone()).collect();
        client.leader_of = is_leader.then_some(members);
        let name = client.name.clone();
        let seen = self.seen.entry(outcome.generation).or_default();
        for (what, expected, got) in [
            ("leader", &mut seen.leader, &leader),
            ("protocol", &mut seen.protocol, &outcome.protocol),
        ] {
            let first = expected.get_or_insert_with(|| got.clone());
            assert_eq!(first, got, "seed {seed}: two {what}s in generation {}", outcome.generation);
        }
        if is_leader {
            let identities = outcome
                .members
                .iter()
                .map(|m| m.instance_id.clone().unwrap_or_else(|| m.member_id.clone()));
            seen.members = Some(identities.collect());
        }
        seen.answered.insert(me);
        self.trace(&format!(
            "{name} joined generation {} (leader: {is_leader})",
            outcome.generation
        ));
    }

    fn synced(&mut self, c: usize, reply: SyncReply) {
        let assignment = match reply {
            Ok(assignment) => assignment,
            Err(error) => return self.member_error(c, error),
        };
        let client = &mut self.clients[c];
        let partitions = decode(&assignment);
        client.owned = Some((client.generation, partitions.clone()));
        let (name, member, generation) =
            (client.name.clone(), client.member_id.clone(), client.generation);
        let identity = self.identity(&member);
        self.seen.entry(generation).or_default().received.insert(identity, partitions.clone());
        self.trace(&format!("{name} owns {partitions:?} in generation {generation}"));
    }

    /// Every member the leader's answer lists offered the chosen protocol: the metadata it sent
    /// for it is its whole offer.
    fn check_protocol(&self, outcome: &super::state::JoinOutcome) {
        for member in &outcome.members {
            let offered = String::from_utf8_lossy(&member.metadata);
            assert!(
                offered.split(',').any(|p| p == outcome.protocol),
                "seed {}: generation {} chose {:?}, member {} offered {offered:?}",
                self.seed,
                outcome.generation,
                outcome.protocol,
                member.member_id
            );
        }
    }

    fn identity(&self, member_id: &str) -> String {
        self.identities.get(member_id).cloned().unwrap_or_else(|| member_id.to_string())
    }

    fn check_generations(&mut self) {
        let seed = self.seed;
        assert!(
            self.driver.group.generation >= self.highest_generation,
            "seed {seed}: the group went back to generation {}",
            self.driver.group.generation
        );
        self.highest_generation = self.driver.group.generation;
        for (generation, seen) in &self.seen {
            if let Some(members) = &seen.members {
                // Members that did not rejoin are gone from the generation: every member its
                // leader lists was answered.
                assert!(
                    members.is_subset(&seen.answered),
                    "seed {seed}: generation {generation} lists {members:?}, only {:?} joined it",
                    seen.answered
                );
                assert!(
                    seen.answered.is_subset(members),
                    "seed {seed}: generation {generation} answered {:?}, its leader lists {members:?}",
                    seen.answered
                );
            }
            let mut owners: BTreeMap<u32, &String> = BTreeMap::new();
            for (member, partitions) in &seen.received {
                if let Some(assigned) = &seen.assigned {
                    let made = assigned.get(member).cloned().unwrap_or_default();
                    assert_eq!(&made, partitions, "seed {seed}: {member} got another assignment");
                }
                for p in partitions {
                    if let Some(other) = owners.insert(*p, member) {
                        panic!("seed {seed}: partition {p} went to {other} and {member} in {generation}");
                    }
                }
            }
        }
    }

    /// One seeded step: a client does something, time passes, the group's timers run.
    fn step(&mut self) {
        let c = self.rng.below(self.clients.len() as u64) as usize;
        let client = &self.clients[c];
        if client.fenced {
            return;
        }
        if client.silent {
            if self.rng.below(8) == 0 {
                // Restarted: a new process, without the old member id (static members keep
                // their instance id and take their place back).
                self.event("restart");
                let upgraded = self.rng.below(3) == 0;
                if upgraded {
                    self.event("restart with other assignors");
                    self.clients[c].protocols = assignors(&mut self.rng);
                }
                let client = &mut self.clients[c];
                self.orphans.extend(client.joining.take());
                (client.silent, client.needs_join, client.owned) = (false, true, None);
                client.member_id.clear();
                client.joining = None;
                client.syncing = None;
                let name = client.name.clone();
                self.trace(&format!("{name} restarts"));
            }
        } else {
            match self.rng.below(20) {
                0 => {
                    self.trace(&format!("{} goes silent", client.name));
                    self.event("silent");
                    self.clients[c].silent = true;
                }
                1 if !client.member_id.is_empty() => {
                    self.event("leave");
                    self.leave(c)
                }
                // Asks again while its join is answered (its request timed out).
                2 if client.joining.is_some() => {
                    self.event("join again");
                    self.join(c);
                }
                _ => self.behave(c),
            }
        }
        self.now += Duration::from_millis(self.rng.below(400));
        self.driver.tick(self.now);
        self.collect();
    }

    /// What a live consumer does next: join when it must, sync after a join, else heartbeat.
    fn behave(&mut self, c: usize) {
        let client = &self.clients[c];
        if client.fenced || client.silent || client.joining.is_some() || client.syncing.is_some() {
            return;
        }
        if client.needs_join {
            self.join(c);
        } else if client.owned.is_none() {
            self.sync(c);
        } else {
            self.heartbeat(c);
        }
    }

    fn run(mut self, steps: u64) -> BTreeMap<&'static str, u64> {
        for _ in 0..steps {
            self.step();
        }
        // Everyone left alive behaves from now on: the group must settle.
        self.chaos = false;
        for _ in 0..2000 {
            for c in 0..self.clients.len() {
                self.behave(c);
            }
            self.now += Duration::from_millis(100);
            self.driver.tick(self.now);
            self.collect();
            if self.settled() {
                let unanswered = self.driver.unanswered();
                assert!(
                    unanswered.is_empty(),
                    "seed {}: never answered: {unanswered:?}",
                    self.seed
                );
                let generations = self.driver.group.generation.max(0) as u64;
                self.events.insert("generations", generations);
                return self.events;
            }
        }
        let states: Vec<_> = self
            .clients
            .iter()
            .map(|c| (&c.name, &c.member_id, c.generation, &c.owned, c.silent, c.fenced))
            .collect();
        panic!(
            "seed {}: the group did not settle: {:?} generation {}, clients {states:?}",
            self.seed, self.driver.group.state, self.driver.group.generation
        );
    }

    /// Stable, every live client a member of the current generation, each partition owned once;
    /// or empty, when no client is left.
    fn settled(&self) -> bool {
        let live: Vec<&Client> = self.clients.iter().filter(|c| !c.silent && !c.fenced).collect();
        if live.is_empty() {
            return self.driver.group.state == GroupState::Empty;
        }
        if self.driver.group.state != GroupState::Stable {
            return false;
        }
        let members: BTreeSet<String> =
            self.driver.group.describe().members.into_iter().map(|m| m.member_id).collect();
        let mut owned: Vec<u32> = Vec::new();
        for client in &live {
            match &client.owned {
                Some((generation, partitions)) if *generation == self.driver.group.generation => {
                    owned.extend(partitions)
                }
                _ => return false,
            }
            if !members.contains(&client.member_id) {
                return false;
            }
        }
        owned.sort_unstable();
        live.len() == members.len() && owned == (0..PARTITIONS).collect::<Vec<_>>()
    }
}

#[test]
fn a_group_agrees_on_every_generation_and_settles() {
    let run = |seed| Run::new(seed).run(300);
    let totals =
        crate::testing::run_seeds("group simulation", "SPATE_GROUP_SIMULATION_SEEDS", 500, run);
    assert!(totals.len() >= 6, "every kind of event ran: {totals:?}");
}
