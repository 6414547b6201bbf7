//! A controller voter's Raft node: raft-rs's `RawNode`, driven without I/O.
//!
//! raft-rs is consensus as a state machine (etcd's design): the caller ticks it, steps it with
//! the messages other voters sent, proposes data, and drains what it asks for in return (entries
//! and hard state to persist, messages to send, committed entries to apply). That is the shape
//! the rest of `cluster/` has, so a seeded simulation drives real Raft over a lossy network the
//! same way it drives the controller's decisions; the broker drives it with glommio timers and
//! the native protocol. Pre-vote and check-quorum are on: a voter cut off from the others does
//! not disrupt them when it returns, and a leader that loses its quorum steps down.
//!
//! Persistence is the caller's: a drain hands back what must be made durable (new log entries,
//! overwriting the log from the first one's index on, then the voter's state) beside the
//! messages and committed data, and nothing of a drain may be acted on (data applied, messages
//! sent) before its persistence is durable. A voter restarts from what its disk holds
//! ([`Voter::restore`]): its latest snapshot, which the caller rebuilds the image from, and the
//! entries after it, which it hands out as committed again.
//!
//! Snapshots bound the log (Raft paper, section 7): the caller snapshots the image it applied
//! ([`Voter::compact`]) and the entries it stands for are dropped. A leader sends its snapshot to
//! a voter that lags behind its log's start; that voter hands it out in a drain
//! ([`Persist::snapshot`]), to be made durable before the entries after it and to replace the
//! caller's image.

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage};

use super::raft_storage::VoterStorage;
use super::raft_wire::{StoredEntry, StoredSnapshot, VoterState};

/// Ticks without a heartbeat before a follower stands for election (raft-rs randomises
/// between this and twice this).
const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
const HEARTBEAT_TICKS: usize = 3;

/// About how much log one append message carries.
const APPEND_BYTES_MAX: u64 = 256 * 1024;

/// Why a voter cannot go on. After one, the voter is dropped and started again from its log:
/// what a failed drain had already taken out of Raft is lost with it.
#[derive(Debug)]
pub enum QuorumError {
    Raft(raft::Error),
    /// What the disk holds cannot be a voter's log and state, or a message would make raft-rs
    /// panic.
    Damaged(String),
}

impl std::fmt::Display for QuorumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raft(e) => write!(f, "raft: {e}"),
            Self::Damaged(why) => write!(f, "the voter's log: {why}"),
        }
    }
}

impl From<raft::Error> for QuorumError {
    fn from(e: raft::Error) -> Self {
        Self::Raft(e)
    }
}

/// What a voter's disk holds: its latest snapshot, the log after it (from index 1 when it has
/// none), and its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub snapshot: Option<StoredSnapshot>,
    pub entries: Vec<StoredEntry>,
    pub state: VoterState,
}

/// What a drain asks to be made durable, in this order: `snapshot` (the leader's) replaces the
/// whole log, `entries` replace the log from the first one's index on (a new leader may
/// overwrite a suffix no quorum took), then `state`.
#[derive(Debug, Default)]
pub struct Persist {
    pub snapshot: Option<StoredSnapshot>,
    pub entries: Vec<StoredEntry>,
    pub state: Option<VoterState>,
}

impl Persist {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.state.is_none()
    }
}

impl Durable {
    /// The index of the entry the snapshot stands for up to (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// What the disk holds once `persist` is durable (the simulation's disk).
    #[cfg(test)]
    pub fn apply(&mut self, persist: &Persist) {
        if let Some(snapshot) = &persist.snapshot {
            self.snapshot = Some(snapshot.clone());
            self.entries.clear();
        }
        if let Some(first) = persist.entries.first() {
            let after = first.index.saturating_sub(1).saturating_sub(self.snapshot_index());
            self.entries.truncate(usize::try_from(after).unwrap_or(usize::MAX));
            self.entries.extend_from_slice(&persist.entries);
        }
        if let Some(state) = persist.state {
            self.state = state;
        }
    }

    /// What the disk holds once the voter's own `snapshot` is durable and the entries it
    /// stands for are dropped (the simulation's disk).
    #[cfg(test)]
    pub fn compact(&mut self, snapshot: StoredSnapshot) {
        let dropped = snapshot.index.saturating_sub(self.snapshot_index());
        let dropped = usize::try_from(dropped).unwrap_or(usize::MAX).min(self.entries.len());
        self.entries.drain(..dropped);
        self.snapshot = Some(snapshot);
    }
}

/// What a drain hands back. Act on it only once `persist` is durable: then apply `committed`
/// and send `messages`.
#[derive(Default)]
pub struct Drained {
    pub persist: Persist,
    pub messages: Vec<Message>,
    /// Entries committed since the last drain, in log order.
    pub committed: Vec<Committed>,
}

/// A committed entry of the voters' log.
#[derive(Clone, Debug)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    /// A metadata batch, or empty: Raft's own entries (a new leader's first) carry no data.
    pub data: Bytes,
}

pub struct Voter {
    node: RawNode<VoterStorage>,
    /// The state last handed out to persist.
    persisted_state: VoterState,
    voters: Vec<u64>,
}

impl Voter {
    /// Voter `id` of a quorum whose voters are `voters` (ids above 0), starting from what its
    /// disk holds (nothing, the first time). What it holds is checked first: raft-rs would
    /// panic on a log with a gap or a commit past its end. Committed entries are handed out
    /// again from the one after the snapshot.
    pub fn restore(id: u64, voters: &[u64], durable: Durable) -> Result<Self, QuorumError> {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        check_durable(&durable, &voters).map_err(QuorumError::Damaged)?;
        let config = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            pre_vote: true,
            check_quorum: true,
            // Many entries per append while a voter catches up (at least one, whatever its size).
            max_size_per_msg: APPEND_BYTES_MAX,
            ..Config::default()
        };
        config.validate()?;
        let mut storage = VoterStorage::new(&voters);
        let mut state = durable.state;
        if let Some(snapshot) = durable.snapshot {
            // The state is made durable after the snapshot it came with: a crash between the
            // two leaves it behind the snapshot, which raft-rs would refuse.
            if snapshot.term > state.term {
                (state.term, state.vote) = (snapshot.term, 0);
            }
            state.commit = state.commit.max(snapshot.index);
            storage.install(snapshot.into_raft());
        }
        let entries: Vec<_> = durable.entries.into_iter().map(StoredEntry::into_raft).collect();
        storage.append(&entries)?;
        storage.set_hard_state(state.into_raft());
        // raft-rs logs through slog; what it says surfaces as this crate's errors instead.
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage, &logger)?;
        if voters == [id] {
            // Alone, it need not wait out an election timeout to lead.
            node.campaign()?;
        }
        Ok(Self { node, persisted_state: state, voters })
    }

    /// The voters' leader, as far as this voter knows (0 while it knows none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message another voter sent. Refused when it is not for this quorum (raft-rs checks),
    /// or when it would make raft-rs panic ([`Self::check_message`]).
    pub fn step(&mut self, message: Message) -> Result<(), QuorumError> {
        self.check_message(&message).map_err(QuorumError::Damaged)?;
        Ok(self.node.step(message)?)
    }

    /// raft-rs trusts its peers and panics on what a correct peer never sends: an append
    /// whose entries do not follow its index or outrun its term, or that would overwrite a
    /// committed entry; a commit index beyond this voter's log. Such a message comes from a
    /// broken or hostile sender (or a voter that lost its disk), and is refused here.
    fn check_message(&self, message: &Message) -> Result<(), String> {
        if message.term == 0 {
            // raft-rs takes term 0 for a voter's own message and skips every term check: every
            // kind voters send each other carries their term.
            return Err(format!("a {:?} of term 0", message.get_msg_type()));
        }
        if message.term < self.node.raft.term {
            // Of an older term: raft-rs ignores it (or answers with its term) without reading
            // its log, and a deposed leader's late append may well conflict with what is
            // committed since.
            return Ok(());
        }
        let log = &self.node.raft.raft_log;
        if message.get_msg_type() == MessageType::MsgSnapshot {
            return self.check_snapshot(message);
        }
        let append = message.get_msg_type() == MessageType::MsgAppend;
        if append && message.index < log.committed {
            // raft-rs answers with its commit index and reads nothing else of it.
            return Ok(());
        }
        // raft-rs reads the term past its log's end as 0, so an append claiming term 0 there
        // would pass its consistency check; a correct leader never sends term 0 above index 0
        // (it sends a snapshot for what it compacted).
        if append && message.index > 0 && message.log_term == 0 {
            return Err(format!("an append after index {} of term 0", message.index));
        }
        let mut expected = message.index;
        for entry in message.entries.iter() {
            expected = expected.checked_add(1).ok_or("an entry index overflows")?;
            if entry.index != expected || entry.term > message.term || entry.term == 0 {
                return Err(format!(
                    "entry {} of term {} in an append of term {} after index {}",
                    entry.index, entry.term, message.term, message.index
                ));
            }
        }
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > log.last_index()
        {
            return Err(format!(
                "a heartbeat commits to {} but this voter's log ends at {}: it lost entries",
                message.commit,
                log.last_index()
            ));
        }
        Ok(())
    }

    /// A leader's snapshot: of this quorum, at an entry of a term no later than the message's,
    /// with data. (Whether the data is an image is the caller's to check, before it steps it.)
    fn check_snapshot(&self, message: &Message) -> Result<(), String> {
        let snapshot = message.get_snapshot();
        let metadata = snapshot.get_metadata();
        let mut voters = metadata.get_conf_state().voters.clone();
        voters.sort_unstable();
        if metadata.index == 0 || metadata.term == 0 || metadata.term > message.term {
            return Err(format!(
                "a snapshot at entry {} of term {} in a message of term {}",
                metadata.index, metadata.term, message.term
            ));
        }
        let cs = metadata.get_conf_state();
        if voters != self.voters || !cs.learners.is_empty() || !cs.voters_outgoing.is_empty() {
            return Err(format!(
                "a snapshot of voters {:?}, not this quorum's {:?}",
                cs.voters, self.voters
            ));
        }
        if snapshot.data.is_empty() {
            return Err("a snapshot without data".into());
        }
        // raft-rs ignores one below its commit index, but restores one at it whose term its log
        // does not match: a correct leader never sends that (committed entries agree).
        let log = &self.node.raft.raft_log;
        if metadata.index == log.committed && log.term(metadata.index).ok() != Some(metadata.term) {
            return Err(format!(
                "a snapshot at entry {} of term {}, which conflicts with this voter's committed log \
                 (committed to {})",
                metadata.index, metadata.term, log.committed
            ));
        }
        Ok(())
    }

    /// The caller's snapshot of what it applied, up to entry `snapshot.index`: a voter that
    /// lags behind the log's start gets it instead of entries. Entries are kept in memory from
    /// the previous snapshot on (one interval's worth), so one only a little behind gets
    /// entries. Refused past what is applied (raft-rs hands out entries only after it).
    pub fn compact(&mut self, snapshot: StoredSnapshot) -> Result<(), QuorumError> {
        let applied = self.node.raft.raft_log.applied;
        if snapshot.index > applied {
            let why = format!("a snapshot at entry {} past the applied {applied}", snapshot.index);
            return Err(QuorumError::Damaged(why));
        }
        let keep_from = self.node.store().snapshot_index() + 1;
        Ok(self.node.mut_store().compact(snapshot.into_raft(), keep_from)?)
    }

    /// The latest snapshot: its index and data (`None` until one is taken or received).
    pub fn snapshot(&self) -> Option<(u64, Bytes)> {
        let store = self.node.store();
        let snapshot = store.snapshot(0, 0).ok()?;
        Some((snapshot.get_metadata().index, snapshot.data))
    }

    /// The first entry the log holds in memory: those before it are in the snapshot.
    pub fn first_index(&self) -> u64 {
        self.node.store().first_index().unwrap_or(1)
    }

    /// The term of entry `index`, while the log holds it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        // raft-rs answers term 0 for an index outside its log (below a leader's snapshot still
        // being persisted, say) rather than an error; no entry has term 0.
        self.node.raft.raft_log.term(index).ok().filter(|term| *term > 0)
    }

    /// While leading: hands leadership to the other voter holding most of the log (raft-rs's
    /// leadership transfer: once it has caught up it campaigns at once), and names it.
    pub fn transfer_leadership(&mut self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let me = self.node.raft.id;
        // Among those heard from lately, when raft-rs knows (it forgets at every check-quorum
        // round until the next heartbeat answers): one cut off could not take over.
        let others = || self.node.raft.prs().iter().filter(move |(id, _)| **id != me);
        let active = others().filter(|(_, p)| p.recent_active).max_by_key(|(_, p)| p.matched);
        let (target, _) = active.or_else(|| others().max_by_key(|(_, p)| p.matched))?;
        let target = *target;
        self.node.transfer_leader(target);
        Some(target)
    }

    /// Proposes `data` for the log; only the leader takes proposals.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), raft::Error> {
        self.node.propose(Vec::new(), data)
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Whether everything in this voter's log has been handed out as committed: a leader
    /// decides only then, against an image that holds all of its log. (The simulation's test;
    /// the broker applies after persisting, so it counts what it applied itself.)
    #[cfg(test)]
    pub fn caught_up(&self) -> bool {
        let log = &self.node.raft.raft_log;
        log.applied == log.last_index()
    }

    /// Entries `from..=to` of the log, about `max_bytes` of them (at least one).
    pub fn entries(
        &self,
        from: u64,
        to: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredEntry>, QuorumError> {
        let context = raft::GetEntriesContext::empty(false);
        let entries = self.node.store().entries(from, to + 1, max_bytes, context)?;
        entries
            .iter()
            .map(StoredEntry::from_raft)
            .collect::<Result<_, _>>()
            .map_err(QuorumError::Damaged)
    }

    /// The index of the last entry in this voter's log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Takes what Raft asks for: entries and state to persist, messages to send, committed
    /// data to apply (see [`Drained`] for the order they must be acted on in).
    pub fn drain(&mut self) -> Result<Drained, QuorumError> {
        let mut drained = Drained::default();
        if !self.node.has_ready() {
            return Ok(drained);
        }
        let mut ready = self.node.ready();
        if !ready.snapshot().is_empty() {
            // A leader's snapshot, to replace the log and the caller's image.
            drained.persist.snapshot = Some(StoredSnapshot::from_raft(ready.snapshot()));
            self.node.mut_store().install(ready.snapshot().clone());
        }
        drained.messages.extend(ready.take_messages());
        committed_data(&mut drained, ready.take_committed_entries());
        if !ready.entries().is_empty() {
            drained.persist.entries = ready
                .entries()
                .iter()
                .map(StoredEntry::from_raft)
                .collect::<Result<_, _>>()
                .map_err(QuorumError::Damaged)?;
            self.node.mut_store().append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().set_hard_state(hard_state.clone());
        }
        drained.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        drained.messages.extend(light.take_messages());
        committed_data(&mut drained, light.take_committed_entries());
        self.node.advance_apply();
        // A snapshot is sent best effort, as every message: raft-rs sends nothing more to its
        // voter until told how it went, so it is told at once. If it was lost, the voter
        // refuses the next append, and the one after its log's end brings the snapshot again.
        let snapshots_to: Vec<u64> = (drained.messages.iter())
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        for to in snapshots_to {
            self.node.report_snapshot(to, SnapshotStatus::Finish);
        }
        let state = VoterState::from_raft(self.node.store().hard_state());
        if state != self.persisted_state {
            drained.persist.state = Some(state);
            self.persisted_state = state;
        }
        Ok(drained)
    }
}

/// A snapshot of this quorum, then a log from the entry after it (from index 1 without one)
/// without gaps, terms that never go down, and state no further than it.
fn check_durable(durable: &Durable, voters: &[u64]) -> Result<(), String> {
    let mut last_term = 0;
    if let Some(snapshot) = &durable.snapshot {
        let mut kept_under = snapshot.voters.clone();
        kept_under.sort_unstable();
        if kept_under != voters || snapshot.index == 0 {
            return Err(format!(
                "a snapshot at entry {} of voters {:?}, not {voters:?}",
                snapshot.index, snapshot.voters
            ));
        }
        last_term = snapshot.term;
    }
    let first = durable.snapshot_index() + 1;
    for (position, entry) in durable.entries.iter().enumerate() {
        let expected = first + position as u64;
        if entry.index != expected {
            return Err(format!("entry {} where entry {expected} belongs", entry.index));
        }
        if entry.term < last_term {
            return Err(format!(
                "entry {} has term {} after term {last_term}",
                entry.index, entry.term
            ));
        }
        last_term = entry.term;
    }
    let state = durable.state;
    let last = durable.snapshot_index() + durable.entries.len() as u64;
    if state.commit > last {
        return Err(format!("committed up to {} but the log ends at {last}", state.commit));
    }
    // The state may be a term behind the log: entries are made durable before the state that
    // came with them, and a crash between the two sent none of that drain's messages.
    Ok(())
}

fn committed_data(drained: &mut Drained, entries: Vec<raft::eraftpb::Entry>) {
    // Entries other than normal ones are refused before they are stored.
    let committed =
        entries.into_iter().map(|e| Committed { index: e.index, term: e.term, data: e.data });
    drained.committed.extend(committed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower (voter 2 of three) holding entries 1..=3 of term 1, committed to 2.
    fn follower() -> Voter {
        let entries = (1..=3).map(|index| StoredEntry { index, term: 1, data: vec![1] }).collect();
        let state = VoterState { term: 1, vote: 1, commit: 2 };
        let durable = Durable { snapshot: None, entries, state };
        Voter::restore(2, &[1, 2, 3], durable).expect("a voter")
    }

    fn message(kind: MessageType, index: u64, entries: &[(u64, u64)], commit: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(kind);
        (message.from, message.to, message.term, message.commit) = (1, 2, 2, commit);
        (message.index, message.log_term) = (index, 1);
        let entries =
            entries.iter().map(|&(index, term)| StoredEntry { index, term, data: vec![] });
        message.entries = entries.map(StoredEntry::into_raft).collect::<Vec<_>>().into();
        message
    }

    fn snapshot_of(index: u64, term: u64, voters: Vec<u64>) -> raft::eraftpb::Snapshot {
        StoredSnapshot { index, term, voters, data: vec![1] }.into_raft()
    }

    /// A leader's snapshot at entry `index` of term `term`.
    fn snapshot_message(index: u64, term: u64) -> Message {
        let mut message = message(MessageType::MsgSnapshot, 0, &[], 0);
        message.set_snapshot(snapshot_of(index, term, vec![1, 2, 3]));
        message
    }

    #[test]
    fn messages_that_would_panic_raft_are_refused_and_good_ones_taken() {
        let mut voter = follower();
        let refused = [
            // A heartbeat committing past the log's end (a voter that lost its disk).
            message(MessageType::MsgHeartbeat, 0, &[], 9),
            // Entries that do not follow the append's index.
            message(MessageType::MsgAppend, 3, &[(5, 2)], 3),
            // Entries of a term past the append's.
            message(MessageType::MsgAppend, 3, &[(4, 3)], 3),
            // Past the log's end, where raft-rs reads term 0: claiming term 0 there, or with
            // entries of term 0.
            Message { log_term: 0, ..message(MessageType::MsgAppend, 8, &[], 8) },
            message(MessageType::MsgAppend, 3, &[(4, 0)], 4),
            // Term 0, which raft-rs takes for the voter's own and checks nothing of.
            Message { term: 0, ..message(MessageType::MsgHeartbeat, 0, &[], 9) },
            // A snapshot at the committed entry 2 under another term than the log's.
            snapshot_message(2, 2),
            // A snapshot of another voter set.
            Message {
                snapshot: Some(snapshot_of(5, 1, vec![2, 3])).into(),
                ..snapshot_message(5, 1)
            },
        ];
        for hostile in refused {
            let kind = hostile.get_msg_type();
            assert!(
                matches!(voter.step(hostile), Err(QuorumError::Damaged(_))),
                "a {kind:?} was taken"
            );
        }
        // An append below the commit index is answered with it, and changes nothing.
        voter.step(message(MessageType::MsgAppend, 1, &[(2, 2)], 2)).expect("taken");
        assert_eq!(voter.term_of(2), Some(1));
        // A leader's snapshot past the log is Raft as usual.
        voter.step(snapshot_message(6, 2)).expect("a snapshot taken");
        let drained = voter.drain().expect("drained");
        assert_eq!(drained.persist.snapshot.map(|s| (s.index, s.term)), Some((6, 2)));
        assert_eq!((voter.first_index(), voter.last_index()), (7, 6));
        let mut voter = follower();
        // A new leader's append that replaces the uncommitted entry 3 is Raft as usual.
        let append = message(MessageType::MsgAppend, 2, &[(3, 2), (4, 2)], 3);
        voter.step(append).expect("taken");
        assert_eq!(voter.last_index(), 4);
    }
}
