//! One consumer group's membership: Kafka's classic rebalance protocol as a state machine.
//!
//! ```text
//!   Empty ──join──► PreparingRebalance ──all rejoined / timeout──► CompletingRebalance
//!     ▲                  ▲        ▲                                        │ leader's SyncGroup
//!     └── last leaves ───┘        └── join, leave, session expiry ◄── Stable ◄┘
//! ```
//!
//! The machine is driven by [`Group::step`]: an event (a member's request, numbered by the
//! caller with a [`Ticket`], or time passing) and the time now go in; the actions the caller must
//! carry out come out (answer ticket so-and-so with this; a session expired). Joins are parked
//! (the member keeps their ticket) until every known member has rejoined or the rebalance
//! timeout passes; then the generation is bumped, a protocol every member supports is chosen,
//! and the leader receives every member's subscription. Followers' SyncGroups are parked until
//! the leader's assignment comes. Every ticket is answered exactly once, never dropped. Nothing
//! here does I/O, reads a clock or holds a channel, so a seeded simulation (`simulation.rs`)
//! replays any run of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::ErrorKind;
use crate::group::offsets::Committed;

/// Member ids handed out with MEMBER_ID_REQUIRED and not yet used; beyond this many the oldest
/// are forgotten (a client that never rejoins must not grow the set forever).
const PENDING_MEMBERS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// As Kafka's DescribeGroups and ListGroups name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// A JoinGroup, protocol-neutral.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// Empty on a first join.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// Protocol names in the member's order of preference, with its metadata for each.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED and an id to rejoin with.
    pub require_known_member: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// What a completed join tells a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol; only the leader gets them.
    pub members: Vec<JoinedMember>,
}

/// A join's answer: the outcome, or an error with the member id to report (set for
/// MEMBER_ID_REQUIRED).
pub type JoinReply = Result<JoinOutcome, (ErrorKind, String)>;
pub type SyncReply = Result<Bytes, ErrorKind>;

/// The caller's number for a request it hands the group: the group hands it back with the
/// answer, in the same step or a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

typed_requests! {
    /// What a member asks of its group, and what the group answers.
    trait MemberRequest, call MemberCall, answer MemberAnswer;

    /// JoinGroup: answered when the rebalance completes, or at once when refused or repeated.
    JoinCall { request: JoinRequest } -> JoinReply;

    /// SyncGroup: a follower's waits for the leader's, which carries every assignment.
    SyncCall {
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    } -> SyncReply;

    HeartbeatCall { member_id: String, instance_id: Option<String>, generation: i32 }
        -> Result<(), ErrorKind>;

    /// One result per member, in the order asked.
    LeaveCall {
        /// (member id, instance id) pairs; an empty member id names the member by instance id.
        members: Vec<(String, Option<String>)>,
    } -> Vec<Result<(), ErrorKind>>;
}

/// What happens to a group.
pub enum Event {
    /// A member's request, numbered by the caller.
    Request { ticket: Ticket, call: MemberCall },
    /// Time passed: sessions expire and rebalance deadlines fall due.
    Tick,
}

/// What the caller must do after a step.
pub enum Action {
    /// Answer the request numbered `ticket`.
    Answer { ticket: Ticket, answer: MemberAnswer },
    /// A member said nothing for its session timeout and was removed.
    Expired { member_id: String },
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// A parked JoinGroup's ticket.
    join_waiter: Option<Ticket>,
    /// A parked SyncGroup's ticket.
    sync_waiter: Option<Ticket>,
}

/// A member as DescribeGroups shows it.
#[derive(Clone, Debug)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    pending: HashSet<String>,
    rebalance_deadline: Option<Instant>,
    /// The first rebalance of an empty group waits out its delay even when everyone is in, so
    /// members starting together land in one generation.
    initial_delay_running: bool,
    /// Member ids are `<client id>-<hex>`, counted up from this number times 1000: the
    /// creator passes the wall clock, so ids stay unique across restarts, and the machine
    /// itself reads no clock.
    member_ids_from: i64,
    next_member: u64,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits.
    initial_delay: Duration,
    /// What this step has for the caller to do.
    actions: Vec<Action>,
    pub offsets: HashMap<(String, i32), Committed>,
}

impl Group {
    pub fn new(id: String, member_ids_from: i64, initial_delay: Duration) -> Self {
        Self {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashSet::new(),
            rebalance_deadline: None,
            initial_delay_running: false,
            member_ids_from,
            next_member: 0,
            initial_delay,
            actions: Vec::new(),
            offsets: HashMap::new(),
        }
    }

    /// Runs one event at `now`; returns what the caller must do, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Request { ticket, call } => match call {
                MemberCall::JoinCall(JoinCall { request }) => self.join(ticket, request, now),
                MemberCall::SyncCall(SyncCall {
                    member_id,
                    instance_id,
                    generation,
                    assignments,
                }) => {
                    let member = (member_id.as_str(), instance_id.as_deref());
                    self.sync(ticket, member, generation, assignments, now);
                }
                MemberCall::HeartbeatCall(HeartbeatCall { member_id, instance_id, generation }) => {
                    let beat = self.heartbeat(&member_id, instance_id.as_deref(), generation, now);
                    self.answer(ticket, MemberAnswer::HeartbeatCall(beat));
                }
                MemberCall::LeaveCall(LeaveCall { members }) => {
                    let results = self.leave(&members, now);
                    self.answer(ticket, MemberAnswer::LeaveCall(results));
                }
            },
            Event::Tick => self.tick(now),
        }
        std::mem::take(&mut self.actions)
    }

    fn answer(&mut self, ticket: Ticket, answer: MemberAnswer) {
        self.actions.push(Action::Answer { ticket, answer });
    }

    fn answer_join(&mut self, ticket: Ticket, reply: JoinReply) {
        self.answer(ticket, MemberAnswer::JoinCall(reply));
    }

    fn answer_sync(&mut self, ticket: Ticket, reply: SyncReply) {
        self.answer(ticket, MemberAnswer::SyncCall(reply));
    }

    /// Answers whatever `member` has parked: it is gone, or its requests are overtaken.
    fn answer_parked(&mut self, member: &mut Member, join: JoinReply, sync: ErrorKind) {
        if let Some(ticket) = member.join_waiter.take() {
            self.answer_join(ticket, join);
        }
        if let Some(ticket) = member.sync_waiter.take() {
            self.answer_sync(ticket, Err(sync));
        }
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let unique = self.member_ids_from.wrapping_mul(1000).wrapping_add(self.next_member as i64);
        format!("{client_id}-{unique:x}")
    }

    /// A JoinGroup: answered at once when refused or repeated, else parked until the rebalance
    /// completes.
    fn join(&mut self, ticket: Ticket, request: JoinRequest, now: Instant) {
        let refused = |e: ErrorKind| Err((e, request.member_id.clone()));
        if self.has_members() && !self.accepts_protocols(&request) {
            return self.answer_join(ticket, refused(ErrorKind::InconsistentGroupProtocol));
        }
        if request.member_id.is_empty() {
            if let Some(instance) = request.instance_id.clone() {
                let known =
                    self.members.iter().find(|(_, m)| m.instance_id.as_ref() == Some(&instance));
                if let Some(old_id) = known.map(|(id, _)| id.clone()) {
                    return self.replace_static_member(&old_id, request, ticket, now);
                }
            } else if request.require_known_member {
                let id = self.new_member_id(&request.client_id);
                if self.pending.len() >= PENDING_MEMBERS_MAX {
                    self.pending.clear();
                }
                self.pending.insert(id.clone());
                return self.answer_join(ticket, Err((ErrorKind::MemberIdRequired, id)));
            }
            let id = self.new_member_id(&request.client_id);
            return self.add_member(id, request, ticket, now);
        }
        if self.pending.remove(&request.member_id) {
            let id = request.member_id.clone();
            return self.add_member(id, request, ticket, now);
        }
        let id = request.member_id.clone();
        let Some(member) = self.members.get_mut(&id) else {
            return self.answer_join(ticket, refused(ErrorKind::UnknownMemberId));
        };
        if member.instance_id.is_some() && member.instance_id != request.instance_id {
            return self.answer_join(ticket, refused(ErrorKind::FencedInstanceId));
        }
        let unchanged = member.protocols == request.protocols;
        member.update(&request, now);
        // The member asked again (its request timed out): the new request takes the old one's
        // place, which hears that its member is no longer waiting there.
        if let Some(overtaken) = member.join_waiter.replace(ticket) {
            self.answer_join(overtaken, Err((ErrorKind::UnknownMemberId, String::new())));
        }
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        let repeat = match self.state {
            // A follower rejoining with nothing new: the current generation stands.
            GroupState::Stable => unchanged && !is_leader,
            // A member that missed its join answer (its request timed out) and asks again:
            // the same answer, not another rebalance (Kafka does the same).
            GroupState::CompletingRebalance => unchanged,
            _ => false,
        };
        match self.state {
            _ if repeat => {
                let outcome = self.outcome_for(&id, is_leader);
                if let Some(waiter) = self.member_mut(&id).and_then(|m| m.join_waiter.take()) {
                    self.answer_join(waiter, Ok(outcome));
                }
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            _ => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
        }
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.get_mut(id)
    }

    /// A new protocol type must match the members', and some protocol must be supported by
    /// every member. An empty group takes any type: its first member sets it (as Kafka's).
    fn accepts_protocols(&self, request: &JoinRequest) -> bool {
        if self.has_members()
            && self.protocol_type.as_deref().is_some_and(|t| t != request.protocol_type)
        {
            return false;
        }
        request.protocols.iter().any(|(name, _)| {
            self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn add_member(&mut self, id: String, request: JoinRequest, ticket: Ticket, now: Instant) {
        let member = Member {
            instance_id: request.instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocol_type: request.protocol_type.clone(),
            protocols: request.protocols,
            assignment: Bytes::new(),
            last_seen: now,
            join_waiter: Some(ticket),
            sync_waiter: None,
        };
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        self.members.insert(id, member);
        self.prepare_rebalance(now);
        self.maybe_complete_join(now);
    }

    /// A static member (group.instance.id) rejoined with a new id: it takes the old member's
    /// place and assignment, and the old id is fenced. A stable group does not rebalance.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        request: JoinRequest,
        ticket: Ticket,
        now: Instant,
    ) {
        let Some(mut member) = self.members.remove(old_id) else {
            // Found by the caller a moment ago: cannot happen, but the ticket is answered.
            return self.answer_join(ticket, Err((ErrorKind::UnknownMemberId, String::new())));
        };
        let fenced = Err((ErrorKind::FencedInstanceId, old_id.to_string()));
        self.answer_parked(&mut member, fenced, ErrorKind::FencedInstanceId);
        let unchanged = member.protocols == request.protocols;
        let new_id = self.new_member_id(&request.client_id);
        member.update(&request, now);
        member.join_waiter = Some(ticket);
        self.members.insert(new_id.clone(), member);
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable && unchanged {
            let outcome = self.outcome_for(&new_id, was_leader);
            if let Some(waiter) = self.member_mut(&new_id).and_then(|m| m.join_waiter.take()) {
                self.answer_join(waiter, Ok(outcome));
            }
            return;
        }
        self.prepare_rebalance(now);
        self.maybe_complete_join(now);
    }

    fn outcome_for(&self, member_id: &str, with_members: bool) -> JoinOutcome {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinOutcome {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members { self.joined_members(&protocol) } else { Vec::new() },
        }
    }

    fn joined_members(&self, protocol: &str) -> Vec<JoinedMember> {
        self.members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(protocol),
            })
            .collect()
    }

    /// Starts gathering members for a new generation. A removal starts one without the initial
    /// delay: the group is not starting, it is losing a member.
    fn prepare_rebalance(&mut self, now: Instant) {
        let initial_delay = self.initial_delay;
        self.prepare_rebalance_with(now, initial_delay);
    }

    fn prepare_rebalance_with(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        if self.state == GroupState::CompletingRebalance {
            let parked: Vec<Ticket> =
                self.members.values_mut().filter_map(|m| m.sync_waiter.take()).collect();
            for ticket in parked {
                self.answer_sync(ticket, Err(ErrorKind::RebalanceInProgress));
            }
        }
        let first = self.state == GroupState::Empty;
        let wait = if first {
            initial_delay
        } else {
            self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default()
        };
        self.initial_delay_running = first && !initial_delay.is_zero();
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = Some(now + wait);
    }

    /// Completes the join phase when every member has rejoined (after the initial delay), or
    /// when the deadline has passed (members that did not rejoin are dropped).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let due = self.rebalance_deadline.is_some_and(|d| now >= d);
        let all_in = self.members.values().all(|m| m.join_waiter.is_some());
        if due || (all_in && !self.initial_delay_running) {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        // Members that did not rejoin are out of the new generation. (None has a sync parked:
        // the rebalance answered those when it began.)
        let (rejoined, gone) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|(_, m)| m.join_waiter.is_some());
        self.members = rejoined;
        for (_, mut member) in gone {
            self.answer_parked(
                &mut member,
                Err((ErrorKind::UnknownMemberId, String::new())),
                ErrorKind::UnknownMemberId,
            );
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_delay_running = false;
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        self.protocol = Some(self.choose_protocol());
        if self.leader.as_ref().is_none_or(|l| !self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.outcome_for(&id, id == leader);
            let Some(member) = self.members.get_mut(&id) else { continue };
            member.last_seen = now;
            if let Some(waiter) = member.join_waiter.take() {
                self.answer_join(waiter, Ok(outcome));
            }
        }
    }

    /// The protocol type stays: an empty group is still a `consumer` group in DescribeGroups
    /// and ListGroups, as in Kafka, until a member of another type joins.
    fn become_empty(&mut self) {
        self.state = GroupState::Empty;
        self.protocol = None;
        self.leader = None;
        self.rebalance_deadline = None;
    }

    /// Each member votes for the first protocol of its list that every member supports; the
    /// most votes win (ties: the earlier in the leader's, here the first member's, order).
    fn choose_protocol(&self) -> String {
        let Some(first) = self.members.values().next() else { return String::new() };
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let votes = |name: &String| {
            self.members
                .values()
                .filter(|m| {
                    m.protocols.iter().map(|(n, _)| n).find(|n| candidates.contains(n))
                        == Some(name)
                })
                .count()
        };
        let mut best: Option<(&String, usize)> = None;
        for name in &candidates {
            let count = votes(name);
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((name, count));
            }
        }
        best.map(|(name, _)| name.clone()).unwrap_or_default()
    }

    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorKind> {
        let Some(member) = self.members.get(member_id) else {
            let fenced = instance_id.is_some_and(|i| {
                self.members.values().any(|m| m.instance_id.as_deref() == Some(i))
            });
            return Err(if fenced {
                ErrorKind::FencedInstanceId
            } else {
                ErrorKind::UnknownMemberId
            });
        };
        if member.instance_id.is_some() && member.instance_id.as_deref() != instance_id {
            return Err(ErrorKind::FencedInstanceId);
        }
        if generation != self.generation {
            return Err(ErrorKind::IllegalGeneration);
        }
        Ok(())
    }

    /// A SyncGroup from `(member id, instance id)`; the leader's carries every member's
    /// assignment and answers every parked one.
    fn sync(
        &mut self,
        ticket: Ticket,
        (member_id, instance_id): (&str, Option<&str>),
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) {
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return self.answer_sync(ticket, Err(e));
        }
        match self.state {
            GroupState::Empty => return self.answer_sync(ticket, Err(ErrorKind::UnknownMemberId)),
            GroupState::PreparingRebalance => {
                return self.answer_sync(ticket, Err(ErrorKind::RebalanceInProgress));
            }
            GroupState::Stable => {
                let assignment = self.members.get(member_id).map(|m| m.assignment.clone());
                return self.answer_sync(ticket, Ok(assignment.unwrap_or_default()));
            }
            GroupState::CompletingRebalance => {}
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_seen = now;
            // Asked again: the newer request waits, the older hears the rebalance goes on.
            if let Some(overtaken) = member.sync_waiter.replace(ticket) {
                self.answer_sync(overtaken, Err(ErrorKind::RebalanceInProgress));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
            for (id, member) in &mut self.members {
                member.assignment = given.remove(id).unwrap_or_default();
            }
            self.state = GroupState::Stable;
            let parked: Vec<(Ticket, Bytes)> = self
                .members
                .values_mut()
                .filter_map(|m| Some((m.sync_waiter.take()?, m.assignment.clone())))
                .collect();
            for (ticket, assignment) in parked {
                self.answer_sync(ticket, Ok(assignment));
            }
        }
    }

    fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ErrorKind> {
        self.check_member(member_id, instance_id, generation)?;
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_seen = now;
        }
        match self.state {
            GroupState::PreparingRebalance => Err(ErrorKind::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Removes members, by member id or (empty id) by instance id. One result per member.
    fn leave(
        &mut self,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<Result<(), ErrorKind>> {
        let mut results = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance_id) in members {
            let id = if member_id.is_empty() {
                self.members
                    .iter()
                    .find(|(_, m)| m.instance_id.is_some() && m.instance_id == *instance_id)
                    .map(|(id, _)| id.clone())
            } else {
                Some(member_id.clone())
            };
            match id.and_then(|id| self.members.remove(&id)) {
                Some(mut member) => {
                    let join = Err((ErrorKind::UnknownMemberId, member_id.clone()));
                    self.answer_parked(&mut member, join, ErrorKind::UnknownMemberId);
                    removed = true;
                    results.push(Ok(()));
                }
                None => results.push(Err(ErrorKind::UnknownMemberId)),
            }
        }
        if removed {
            self.after_removal(now);
        }
        results
    }

    fn after_removal(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.generation += 1;
            self.become_empty();
        } else {
            self.prepare_rebalance_with(now, Duration::ZERO);
            self.maybe_complete_join(now);
        }
    }

    /// Session expiry and rebalance deadlines.
    fn tick(&mut self, now: Instant) {
        // A member parked in a join is alive: its request is its heartbeat.
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none() && now >= m.last_seen + m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(mut member) = self.members.remove(id) {
                let join = Err((ErrorKind::UnknownMemberId, id.clone()));
                self.answer_parked(&mut member, join, ErrorKind::UnknownMemberId);
            }
        }
        if !expired.is_empty() {
            self.after_removal(now);
        }
        if self.initial_delay_running && self.rebalance_deadline.is_some_and(|d| now >= d) {
            self.initial_delay_running = false;
        }
        self.maybe_complete_join(now);
        self.actions.extend(expired.into_iter().map(|member_id| Action::Expired { member_id }));
    }

    /// Whether a commit from this member at this generation may go ahead. Generation -1 with
    /// no member id commits outside membership, allowed while the group has no members.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorKind> {
        if generation < 0 && member_id.is_empty() {
            return if self.has_members() { Err(ErrorKind::UnknownMemberId) } else { Ok(()) };
        }
        self.check_member(member_id, instance_id, generation)?;
        // As Kafka: members may still commit what they processed while a rebalance gathers
        // (their revoke callbacks do), but not between the join and the new assignment.
        match self.state {
            GroupState::CompletingRebalance => Err(ErrorKind::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    pub fn describe(&self) -> GroupDescription {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupDescription {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }
}

impl Member {
    fn update(&mut self, request: &JoinRequest, now: Instant) {
        self.session_timeout = request.session_timeout;
        self.rebalance_timeout = request.rebalance_timeout;
        self.protocols = request.protocols.clone();
        self.client_id = request.client_id.clone();
        self.client_host = request.client_host.clone();
        self.last_seen = now;
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::driver::Driver;

    fn join_request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            require_known_member: true,
        }
    }

    fn group(initial_delay: Duration) -> Driver {
        Driver::new(Group::new("g".into(), 0, initial_delay))
    }

    fn join_call(request: JoinRequest) -> JoinCall {
        JoinCall { request }
    }

    fn sync_call(member: &str, generation: i32, assignments: Vec<(String, Bytes)>) -> SyncCall {
        SyncCall { member_id: member.into(), instance_id: None, generation, assignments }
    }

    fn heartbeat(member: &str, instance: Option<&str>, generation: i32) -> HeartbeatCall {
        let instance_id = instance.map(str::to_string);
        HeartbeatCall { member_id: member.into(), instance_id, generation }
    }

    fn leave(member: &str) -> LeaveCall {
        LeaveCall { members: vec![(member.to_string(), None)] }
    }

    /// Joins with MEMBER_ID_REQUIRED and the rejoin; returns the parked join's ticket.
    fn join(driver: &mut Driver, now: Instant, protocols: &[&str]) -> Ticket {
        let (error, id) = driver.call(join_call(join_request("", protocols)), now).unwrap_err();
        assert_eq!(error, ErrorKind::MemberIdRequired);
        driver.ask(join_call(join_request(&id, protocols)), now)
    }

    fn joined(driver: &mut Driver, ticket: Ticket) -> JoinOutcome {
        driver.answer::<JoinCall>(ticket).expect("answered").expect("joined")
    }

    #[test]
    fn two_members_join_sync_and_a_leave_rebalances() {
        let now = Instant::now();
        let mut driver = group(Duration::ZERO);
        let first = join(&mut driver, now, &["range"]);
        let first = joined(&mut driver, first);
        assert_eq!(first.generation, 1);
        assert_eq!(first.leader, first.member_id);
        let all = vec![(first.member_id.clone(), Bytes::from("all"))];
        let synced = driver.call(sync_call(&first.member_id, 1, all), now);
        assert_eq!(synced, Ok(Bytes::from("all")));
        assert_eq!(driver.group.state, GroupState::Stable);

        // A second member: the first learns of the rebalance by heartbeat and rejoins.
        let second = join(&mut driver, now, &["range", "roundrobin"]);
        let beat = driver.call(heartbeat(&first.member_id, None, 1), now);
        assert_eq!(beat, Err(ErrorKind::RebalanceInProgress));
        let rejoined = driver.ask(join_call(join_request(&first.member_id, &["range"])), now);
        let (leader, follower) = (joined(&mut driver, rejoined), joined(&mut driver, second));
        assert_eq!(leader.generation, 2);
        assert_eq!(leader.protocol, "range");
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let waiting = driver.ask(sync_call(&follower.member_id, 2, vec![]), now);
        assert_eq!(driver.answer::<SyncCall>(waiting), None, "parked until the leader's");
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from("a")),
            (follower.member_id.clone(), Bytes::from("b")),
        ];
        let leaders = driver.call(sync_call(&leader.member_id, 2, assignments), now);
        assert_eq!(leaders, Ok(Bytes::from("a")));
        assert_eq!(driver.answer::<SyncCall>(waiting), Some(Ok(Bytes::from("b"))));

        assert_eq!(driver.call(leave(&leader.member_id), now), vec![Ok(())]);
        assert_eq!(driver.group.state, GroupState::PreparingRebalance);
        let beat = driver.call(heartbeat(&follower.member_id, None, 2), now);
        assert_eq!(beat, Err(ErrorKind::RebalanceInProgress));
    }

    #[test]
    fn a_silent_member_is_evicted_after_its_session_timeout() {
        let now = Instant::now();
        let mut driver = group(Duration::ZERO);
        let a = join(&mut driver, now, &["range"]);
        let a = joined(&mut driver, a);
        driver.call(sync_call(&a.member_id, 1, vec![]), now).expect("synced");
        let b = join(&mut driver, now, &["range"]);
        let a_again = driver.ask(join_call(join_request(&a.member_id, &["range"])), now);
        let b = joined(&mut driver, b);
        joined(&mut driver, a_again);
        let b_sync = driver.ask(sync_call(&b.member_id, 2, vec![]), now);
        let later = now + Duration::from_secs(5);
        assert_eq!(driver.call(heartbeat(&a.member_id, None, 2), later), Ok(()));
        // b says nothing for longer than its 10 s session; its parked sync is answered.
        let evicted = driver.tick(now + Duration::from_secs(11));
        assert_eq!(evicted, vec![b.member_id.clone()]);
        let unknown = Some(Err(ErrorKind::UnknownMemberId));
        assert_eq!(driver.answer::<SyncCall>(b_sync), unknown);
        assert_eq!(driver.group.state, GroupState::PreparingRebalance);
        let beat = driver.call(heartbeat(&b.member_id, None, 2), later);
        assert_eq!(beat, Err(ErrorKind::UnknownMemberId));
    }

    #[test]
    fn protocols_must_overlap_and_generations_must_match() {
        let now = Instant::now();
        let mut driver = group(Duration::ZERO);
        let a = join(&mut driver, now, &["range"]);
        let a = joined(&mut driver, a);
        let refused = driver.call(join_call(join_request("", &["sticky"])), now).unwrap_err();
        assert_eq!(refused.0, ErrorKind::InconsistentGroupProtocol);
        let wrong_generation = driver.call(sync_call(&a.member_id, 7, vec![]), now);
        assert_eq!(wrong_generation, Err(ErrorKind::IllegalGeneration));
        let stranger = driver.call(heartbeat("nobody", None, 1), now);
        assert_eq!(stranger, Err(ErrorKind::UnknownMemberId));
        assert_eq!(driver.group.check_commit("", None, -1), Err(ErrorKind::UnknownMemberId));
        driver.call(leave(&a.member_id), now);
        assert_eq!(driver.group.state, GroupState::Empty);
        assert_eq!(driver.group.check_commit("", None, -1), Ok(()));
    }

    #[test]
    fn a_static_member_rejoins_without_a_rebalance_and_fences_its_old_id() {
        let now = Instant::now();
        let mut driver = group(Duration::ZERO);
        let mut request = join_request("", &["range"]);
        request.instance_id = Some("host-1".into());
        let first = driver.call(join_call(request.clone()), now).expect("joined");
        let p0 = vec![(first.member_id.clone(), Bytes::from("p0"))];
        let sync =
            SyncCall { instance_id: Some("host-1".into()), ..sync_call(&first.member_id, 1, p0) };
        driver.call(sync, now).expect("synced");
        let again = driver.call(join_call(request), now).expect("joined");
        assert_ne!(again.member_id, first.member_id);
        assert_eq!(again.generation, 1, "no rebalance");
        assert_eq!(driver.group.state, GroupState::Stable);
        let sync = SyncCall {
            instance_id: Some("host-1".into()),
            ..sync_call(&again.member_id, 1, vec![])
        };
        assert_eq!(driver.call(sync, now), Ok(Bytes::from("p0")));
        let old = driver.call(heartbeat(&first.member_id, Some("host-1"), 1), now);
        assert_eq!(old, Err(ErrorKind::FencedInstanceId));
    }

    #[test]
    fn the_initial_delay_collects_members_into_one_generation() {
        let now = Instant::now();
        let mut driver = group(Duration::from_secs(3));
        let mut request = join_request("", &["range"]);
        request.require_known_member = false;
        let a = driver.ask(join_call(request.clone()), now);
        let b = driver.ask(join_call(request), now + Duration::from_secs(1));
        driver.tick(now + Duration::from_secs(2));
        assert_eq!(driver.group.state, GroupState::PreparingRebalance);
        driver.tick(now + Duration::from_secs(3));
        let (a, b) = (joined(&mut driver, a), joined(&mut driver, b));
        assert_eq!((a.generation, b.generation), (1, 1));
    }

    /// A member that asks to join again while its first join is parked: the second request
    /// waits in its place, and the first is answered (it was not dropped unanswered).
    #[test]
    fn a_join_asked_again_answers_the_one_it_overtakes() {
        let now = Instant::now();
        let mut driver = group(Duration::from_secs(3));
        let first = join(&mut driver, now, &["range"]);
        let id = driver.group.describe().members[0].member_id.clone();
        let second = driver.ask(join_call(join_request(&id, &["range"])), now);
        let overtaken = driver.answer::<JoinCall>(first).expect("the first is answered");
        assert_eq!(overtaken.unwrap_err().0, ErrorKind::UnknownMemberId);
        driver.tick(now + Duration::from_secs(3));
        assert_eq!(joined(&mut driver, second).member_id, id);
        assert!(driver.unanswered().is_empty());
    }

    /// Regression: a group whose members had all left lost its protocol type and was then
    /// described (and listed) as a simple group.
    #[test]
    fn an_emptied_group_keeps_its_protocol_type_until_a_member_of_another_joins() {
        let now = Instant::now();
        let mut driver = group(Duration::ZERO);
        let first = join(&mut driver, now, &["range"]);
        let first = joined(&mut driver, first);
        assert_eq!(driver.call(leave(&first.member_id), now), vec![Ok(())]);
        assert_eq!(driver.group.state, GroupState::Empty);
        assert_eq!(driver.group.describe().protocol_type, "consumer");

        let connect = JoinRequest { protocol_type: "connect".into(), ..join_request("", &["x"]) };
        let (error, id) = driver.call(join_call(connect.clone()), now).unwrap_err();
        assert_eq!(error, ErrorKind::MemberIdRequired);
        let rejoin = JoinRequest { member_id: id, ..connect };
        assert!(driver.call(join_call(rejoin), now).is_ok());
        assert_eq!(driver.group.describe().protocol_type, "connect");
    }
}
