//! One consumer group's membership: Kafka's classic rebalance protocol as a state machine.
//!
//! ```text
//!   Empty ──join──► PreparingRebalance ──all rejoined / timeout──► CompletingRebalance
//!     ▲                  ▲        ▲                                        │ leader's SyncGroup
//!     └── last leaves ───┘        └── join, leave, session expiry ◄── Stable ◄┘
//! ```
//!
//! Joins wait (their replies are oneshots held by the members) until every known member has
//! rejoined or the rebalance timeout passes; then the generation is bumped, a protocol every
//! member supports is chosen, and the leader receives every member's subscription. Followers'
//! SyncGroups wait for the leader's assignment. Nothing here does I/O or reads a clock: callers
//! pass `now`, which keeps the machine testable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

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
    join_waiter: Option<oneshot::Sender<JoinReply>>,
    sync_waiter: Option<oneshot::Sender<SyncReply>>,
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
    pub offsets: HashMap<(String, i32), Committed>,
}

impl Group {
    pub fn new(id: String, member_ids_from: i64) -> Self {
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
            offsets: HashMap::new(),
        }
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let unique = self.member_ids_from.wrapping_mul(1000).wrapping_add(self.next_member as i64);
        format!("{client_id}-{unique:x}")
    }

    /// Starts a join. The receiver yields the answer (at once, or when the rebalance completes).
    pub fn join(
        &mut self,
        request: JoinRequest,
        now: Instant,
        initial_delay: Duration,
    ) -> Result<oneshot::Receiver<JoinReply>, (ErrorKind, String)> {
        let refuse = |e: ErrorKind| (e, request.member_id.clone());
        if self.has_members() && !self.accepts_protocols(&request) {
            return Err(refuse(ErrorKind::InconsistentGroupProtocol));
        }
        let (reply, answer) = oneshot::channel();
        if request.member_id.is_empty() {
            if let Some(instance) = request.instance_id.clone() {
                let known =
                    self.members.iter().find(|(_, m)| m.instance_id.as_ref() == Some(&instance));
                if let Some(old_id) = known.map(|(id, _)| id.clone()) {
                    self.replace_static_member(&old_id, request, reply, now, initial_delay);
                    return Ok(answer);
                }
            } else if request.require_known_member {
                let id = self.new_member_id(&request.client_id);
                if self.pending.len() >= PENDING_MEMBERS_MAX {
                    self.pending.clear();
                }
                self.pending.insert(id.clone());
                return Err((ErrorKind::MemberIdRequired, id));
            }
            let id = self.new_member_id(&request.client_id);
            self.add_member(id, request, reply, now, initial_delay);
            return Ok(answer);
        }
        if self.pending.remove(&request.member_id) {
            let id = request.member_id.clone();
            self.add_member(id, request, reply, now, initial_delay);
            return Ok(answer);
        }
        let id = request.member_id.clone();
        let Some(member) = self.members.get_mut(&id) else {
            return Err(refuse(ErrorKind::UnknownMemberId));
        };
        if member.instance_id.is_some() && member.instance_id != request.instance_id {
            return Err(refuse(ErrorKind::FencedInstanceId));
        }
        let unchanged = member.protocols == request.protocols;
        member.update(&request, now);
        member.join_waiter = Some(reply);
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
                    let _ = waiter.send(Ok(outcome));
                }
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            _ => {
                self.prepare_rebalance(now, initial_delay);
                self.maybe_complete_join(now);
            }
        }
        Ok(answer)
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

    fn add_member(
        &mut self,
        id: String,
        request: JoinRequest,
        reply: oneshot::Sender<JoinReply>,
        now: Instant,
        initial_delay: Duration,
    ) {
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
            join_waiter: Some(reply),
            sync_waiter: None,
        };
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        self.members.insert(id, member);
        self.prepare_rebalance(now, initial_delay);
        self.maybe_complete_join(now);
    }

    /// A static member (group.instance.id) rejoined with a new id: it takes the old member's
    /// place and assignment, and the old id is fenced. A stable group does not rebalance.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        request: JoinRequest,
        reply: oneshot::Sender<JoinReply>,
        now: Instant,
        initial_delay: Duration,
    ) {
        let Some(mut member) = self.members.remove(old_id) else { return };
        if let Some(waiter) = member.join_waiter.take() {
            let _ = waiter.send(Err((ErrorKind::FencedInstanceId, old_id.to_string())));
        }
        if let Some(waiter) = member.sync_waiter.take() {
            let _ = waiter.send(Err(ErrorKind::FencedInstanceId));
        }
        let unchanged = member.protocols == request.protocols;
        let new_id = self.new_member_id(&request.client_id);
        member.update(&request, now);
        member.join_waiter = Some(reply);
        self.members.insert(new_id.clone(), member);
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable && unchanged {
            let outcome = self.outcome_for(&new_id, was_leader);
            if let Some(waiter) = self.member_mut(&new_id).and_then(|m| m.join_waiter.take()) {
                let _ = waiter.send(Ok(outcome));
            }
            return;
        }
        self.prepare_rebalance(now, initial_delay);
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

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(Err(ErrorKind::RebalanceInProgress));
                }
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
        self.members.retain(|_, m| m.join_waiter.is_some());
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
            if let Some(member) = self.members.get_mut(&id) {
                member.last_seen = now;
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(Ok(outcome));
                }
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

    /// Starts a SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<oneshot::Receiver<SyncReply>, ErrorKind> {
        self.check_member(member_id, instance_id, generation)?;
        let (reply, answer) = oneshot::channel();
        match self.state {
            GroupState::Empty => return Err(ErrorKind::UnknownMemberId),
            GroupState::PreparingRebalance => return Err(ErrorKind::RebalanceInProgress),
            GroupState::Stable => {
                let assignment = self.members.get(member_id).map(|m| m.assignment.clone());
                let _ = reply.send(Ok(assignment.unwrap_or_default()));
                return Ok(answer);
            }
            GroupState::CompletingRebalance => {}
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_seen = now;
            member.sync_waiter = Some(reply);
        }
        if self.leader.as_deref() == Some(member_id) {
            let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
            for (id, member) in &mut self.members {
                member.assignment = given.remove(id).unwrap_or_default();
            }
            self.state = GroupState::Stable;
            for member in self.members.values_mut() {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(Ok(member.assignment.clone()));
                }
            }
        }
        Ok(answer)
    }

    pub fn heartbeat(
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
    pub fn leave(
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
                    if let Some(waiter) = member.join_waiter.take() {
                        let _ = waiter.send(Err((ErrorKind::UnknownMemberId, member_id.clone())));
                    }
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(Err(ErrorKind::UnknownMemberId));
                    }
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
            self.prepare_rebalance(now, Duration::ZERO);
            self.maybe_complete_join(now);
        }
    }

    /// Session expiry and rebalance deadlines. Returns the members it evicted.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        // A member parked in a join is alive: its request is its heartbeat.
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none() && now >= m.last_seen + m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(mut member) = self.members.remove(id) {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(Err(ErrorKind::UnknownMemberId));
                }
            }
        }
        if !expired.is_empty() {
            self.after_removal(now);
        }
        if self.initial_delay_running && self.rebalance_deadline.is_some_and(|d| now >= d) {
            self.initial_delay_running = false;
        }
        self.maybe_complete_join(now);
        expired
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

    fn answer<T>(mut receiver: oneshot::Receiver<T>) -> Option<T> {
        receiver.try_recv().ok().flatten()
    }

    /// Joins with MEMBER_ID_REQUIRED and the rejoin; returns the pending join.
    fn join(group: &mut Group, now: Instant, protocols: &[&str]) -> oneshot::Receiver<JoinReply> {
        let (error, id) = group.join(join_request("", protocols), now, Duration::ZERO).unwrap_err();
        assert_eq!(error, ErrorKind::MemberIdRequired);
        group.join(join_request(&id, protocols), now, Duration::ZERO).unwrap()
    }

    #[test]
    fn two_members_join_sync_and_a_leave_rebalances() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let first = answer(join(&mut group, now, &["range"])).unwrap().unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(first.leader, first.member_id);
        let synced = group
            .sync(
                &first.member_id,
                None,
                1,
                vec![(first.member_id.clone(), Bytes::from("all"))],
                now,
            )
            .unwrap();
        assert_eq!(answer(synced).unwrap().unwrap(), Bytes::from("all"));
        assert_eq!(group.state, GroupState::Stable);

        // A second member: the first learns of the rebalance by heartbeat and rejoins.
        let second = join(&mut group, now, &["range", "roundrobin"]);
        assert_eq!(
            group.heartbeat(&first.member_id, None, 1, now),
            Err(ErrorKind::RebalanceInProgress)
        );
        let rejoined =
            group.join(join_request(&first.member_id, &["range"]), now, Duration::ZERO).unwrap();
        let (leader, follower) =
            (answer(rejoined).unwrap().unwrap(), answer(second).unwrap().unwrap());
        assert_eq!(leader.generation, 2);
        assert_eq!(leader.protocol, "range");
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let waiting = group.sync(&follower.member_id, None, 2, vec![], now).unwrap();
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from("a")),
            (follower.member_id.clone(), Bytes::from("b")),
        ];
        group.sync(&leader.member_id, None, 2, assignments, now).unwrap().close();
        assert_eq!(answer(waiting).unwrap().unwrap(), Bytes::from("b"));

        assert_eq!(group.leave(&[(leader.member_id.clone(), None)], now), vec![Ok(())]);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&follower.member_id, None, 2, now),
            Err(ErrorKind::RebalanceInProgress)
        );
    }

    #[test]
    fn a_silent_member_is_evicted_after_its_session_timeout() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let a = answer(join(&mut group, now, &["range"])).unwrap().unwrap();
        group.sync(&a.member_id, None, 1, vec![], now).unwrap().close();
        let b = join(&mut group, now, &["range"]);
        let a_again =
            group.join(join_request(&a.member_id, &["range"]), now, Duration::ZERO).unwrap();
        let b = answer(b).unwrap().unwrap();
        answer(a_again).unwrap().unwrap();
        group.sync(&b.member_id, None, 2, vec![], now).unwrap().close();
        let later = now + Duration::from_secs(5);
        assert_eq!(group.heartbeat(&a.member_id, None, 2, later), Ok(()));
        // b says nothing for longer than its 10 s session.
        let evicted = group.tick(now + Duration::from_secs(11));
        assert_eq!(evicted, vec![b.member_id.clone()]);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(group.heartbeat(&b.member_id, None, 2, later), Err(ErrorKind::UnknownMemberId));
    }

    #[test]
    fn protocols_must_overlap_and_generations_must_match() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let a = answer(join(&mut group, now, &["range"])).unwrap().unwrap();
        let refused = group.join(join_request("", &["sticky"]), now, Duration::ZERO).unwrap_err();
        assert_eq!(refused.0, ErrorKind::InconsistentGroupProtocol);
        assert_eq!(
            group.sync(&a.member_id, None, 7, vec![], now).unwrap_err(),
            ErrorKind::IllegalGeneration
        );
        assert_eq!(group.heartbeat("nobody", None, 1, now), Err(ErrorKind::UnknownMemberId));
        assert_eq!(group.check_commit("", None, -1), Err(ErrorKind::UnknownMemberId));
        group.leave(&[(a.member_id, None)], now);
        assert_eq!(group.state, GroupState::Empty);
        assert_eq!(group.check_commit("", None, -1), Ok(()));
    }

    #[test]
    fn a_static_member_rejoins_without_a_rebalance_and_fences_its_old_id() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let mut request = join_request("", &["range"]);
        request.instance_id = Some("host-1".into());
        let first =
            answer(group.join(request.clone(), now, Duration::ZERO).unwrap()).unwrap().unwrap();
        group
            .sync(
                &first.member_id,
                Some("host-1"),
                1,
                vec![(first.member_id.clone(), Bytes::from("p0"))],
                now,
            )
            .unwrap()
            .close();
        let again = answer(group.join(request, now, Duration::ZERO).unwrap()).unwrap().unwrap();
        assert_ne!(again.member_id, first.member_id);
        assert_eq!(again.generation, 1, "no rebalance");
        assert_eq!(group.state, GroupState::Stable);
        let synced = group.sync(&again.member_id, Some("host-1"), 1, vec![], now).unwrap();
        assert_eq!(answer(synced).unwrap().unwrap(), Bytes::from("p0"));
        assert_eq!(
            group.heartbeat(&first.member_id, Some("host-1"), 1, now),
            Err(ErrorKind::FencedInstanceId)
        );
    }

    #[test]
    fn the_initial_delay_collects_members_into_one_generation() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let delay = Duration::from_secs(3);
        let mut request = join_request("", &["range"]);
        request.require_known_member = false;
        let a = group.join(request.clone(), now, delay).unwrap();
        let b = group.join(request, now + Duration::from_secs(1), delay).unwrap();
        group.tick(now + Duration::from_secs(2));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        group.tick(now + Duration::from_secs(3));
        let (a, b) = (answer(a).unwrap().unwrap(), answer(b).unwrap().unwrap());
        assert_eq!((a.generation, b.generation), (1, 1));
    }

    /// Regression: a group whose members had all left lost its protocol type and was then
    /// described (and listed) as a simple group.
    #[test]
    fn an_emptied_group_keeps_its_protocol_type_until_a_member_of_another_joins() {
        let now = Instant::now();
        let mut group = Group::new("g".into(), 0);
        let joined = answer(join(&mut group, now, &["range"])).unwrap().unwrap();
        assert_eq!(group.leave(&[(joined.member_id, None)], now), vec![Ok(())]);
        assert_eq!(group.state, GroupState::Empty);
        assert_eq!(group.describe().protocol_type, "consumer");

        let connect = JoinRequest { protocol_type: "connect".into(), ..join_request("", &["x"]) };
        let (error, id) = group.join(connect.clone(), now, Duration::ZERO).unwrap_err();
        assert_eq!(error, ErrorKind::MemberIdRequired);
        let rejoin = JoinRequest { member_id: id, ..connect };
        assert!(group.join(rejoin, now, Duration::ZERO).is_ok());
        assert_eq!(group.describe().protocol_type, "connect");
    }
}
