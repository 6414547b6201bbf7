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
//! The log lives in raft-rs's `MemStorage` for now; persisting it (and snapshots of the
//! metadata image) is the milestone after this one.

use bytes::Bytes;
use raft::eraftpb::{ConfState, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

/// Ticks without a heartbeat before a follower stands for election (raft-rs randomises
/// between this and twice this).
const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
const HEARTBEAT_TICKS: usize = 3;

/// Why a voter cannot go on. After one, the voter is dropped and started again from its log:
/// what a failed drain had already taken out of Raft is lost with it.
#[derive(Debug)]
pub enum QuorumError {
    Raft(raft::Error),
    /// A snapshot arrived: nothing compacts the log yet, so none should, and the metadata image
    /// cannot be rebuilt from one.
    Snapshot,
}

impl std::fmt::Display for QuorumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raft(e) => write!(f, "raft: {e}"),
            Self::Snapshot => {
                write!(f, "a metadata snapshot arrived, and snapshots are not taken yet")
            }
        }
    }
}

impl From<raft::Error> for QuorumError {
    fn from(e: raft::Error) -> Self {
        Self::Raft(e)
    }
}

/// What a drain hands back: messages to send, and data committed since the last drain, in log
/// order (Raft's own empty entries, such as a new leader's first, are not data).
#[derive(Default)]
pub struct Drained {
    pub messages: Vec<Message>,
    pub committed: Vec<Bytes>,
}

pub struct Voter {
    node: RawNode<MemStorage>,
}

impl Voter {
    /// Voter `id` of a quorum whose voters are `voters` (ids above 0).
    pub fn new(id: u64, voters: &[u64]) -> Result<Self, raft::Error> {
        let config = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            pre_vote: true,
            check_quorum: true,
            ..Config::default()
        };
        config.validate()?;
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        // raft-rs logs through slog; what it says surfaces as this crate's errors instead.
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Self { node: RawNode::new(&config, storage, &logger)? })
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message another voter sent. Refused when it is not for this quorum (raft-rs checks).
    pub fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        self.node.step(message)
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
    /// decides only then, against an image that holds all of its log.
    pub fn caught_up(&self) -> bool {
        let log = &self.node.raft.raft_log;
        log.applied == log.last_index()
    }

    /// Does what Raft asks (entries and hard state stored, in that order, before the messages
    /// that depend on them go out) and returns the messages to send and the committed data.
    pub fn drain(&mut self) -> Result<Drained, QuorumError> {
        let mut drained = Drained::default();
        if !self.node.has_ready() {
            return Ok(drained);
        }
        let mut ready = self.node.ready();
        if !ready.snapshot().is_empty() {
            return Err(QuorumError::Snapshot);
        }
        drained.messages.extend(ready.take_messages());
        committed_data(&mut drained, ready.take_committed_entries());
        if !ready.entries().is_empty() {
            self.node.mut_store().wl().append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().wl().set_hardstate(hard_state.clone());
        }
        drained.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        drained.messages.extend(light.take_messages());
        committed_data(&mut drained, light.take_committed_entries());
        self.node.advance_apply();
        Ok(drained)
    }
}

fn committed_data(drained: &mut Drained, entries: Vec<raft::eraftpb::Entry>) {
    let data = entries.into_iter().filter(|e| e.get_entry_type() == EntryType::EntryNormal);
    drained.committed.extend(data.filter(|e| !e.data.is_empty()).map(|e| e.data));
}
