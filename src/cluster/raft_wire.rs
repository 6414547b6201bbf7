//! The voters' Raft log entries and messages in Spate's own forms, for the disk and the wire.
//!
//! raft-rs hands out protobuf structs (rust-protobuf 2). Spate does not put those on the wire or
//! the disk: its own rkyv forms carry exactly the fields Spate's Raft uses, are validated when
//! read like every other input (an unknown message kind, a snapshot, a configuration change or
//! a message only a voter itself may make is refused by name), and keep protobuf's parser, with
//! its open advisory on deeply nested input (RUSTSEC-2024-0437), off every path from the network.

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType, HardState, Message, MessageType};
use rkyv::{Archive, Deserialize, Serialize};

/// One entry of the voters' log: a metadata batch (`metadata::encode_batch`), or empty (the
/// entry a new leader appends to commit its term).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct StoredEntry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// What a voter must keep across restarts besides its log (Raft's hard state): its term, whom
/// it voted for in it, and how far it knows the log committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct VoterState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// A Raft message between voters.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireMessage {
    /// raft-rs's `MessageType` number.
    pub kind: u8,
    pub to: u64,
    pub from: u64,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<StoredEntry>,
    pub commit: u64,
    pub commit_term: u64,
    pub request_snapshot: u64,
    pub reject: bool,
    pub reject_hint: u64,
    /// raft-rs marks a leadership transfer's campaign here.
    pub context: Vec<u8>,
    pub priority: i64,
}

impl StoredEntry {
    /// Refuses what Spate's Raft never makes: configuration changes (the voter set is static).
    pub fn from_raft(entry: &Entry) -> Result<Self, String> {
        if entry.get_entry_type() != EntryType::EntryNormal {
            return Err(format!(
                "log entry {} is a {:?}; the voter set is static",
                entry.index,
                entry.get_entry_type()
            ));
        }
        Ok(Self { index: entry.index, term: entry.term, data: entry.data.to_vec() })
    }

    pub fn into_raft(self) -> Entry {
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryNormal);
        entry.index = self.index;
        entry.term = self.term;
        entry.data = Bytes::from(self.data);
        entry
    }
}

impl VoterState {
    pub fn from_raft(state: &HardState) -> Self {
        Self { term: state.term, vote: state.vote, commit: state.commit }
    }

    pub fn into_raft(self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.commit, ..Default::default() }
    }
}

/// The kinds one voter sends another. The rest are a voter's own (a tick's campaign or
/// heartbeat, a proposal, which only the leader takes here), carry snapshots, which are not
/// taken yet, or serve read-index reads, which Spate does not make.
const SENT_KINDS: [MessageType; 10] = [
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

fn sent_kind(kind: u8) -> Option<MessageType> {
    SENT_KINDS.into_iter().find(|k| *k as u8 == kind)
}

impl WireMessage {
    pub fn from_raft(message: &Message) -> Result<Self, String> {
        let kind = message.get_msg_type();
        if sent_kind(kind as u8).is_none() {
            return Err(format!("a {kind:?} is not sent between voters"));
        }
        if message.snapshot.is_some() {
            return Err(format!("a {kind:?} carries a snapshot, which is not taken yet"));
        }
        let entries =
            message.entries.iter().map(StoredEntry::from_raft).collect::<Result<_, _>>()?;
        Ok(Self {
            kind: kind as u8,
            to: message.to,
            from: message.from,
            term: message.term,
            log_term: message.log_term,
            index: message.index,
            entries,
            commit: message.commit,
            commit_term: message.commit_term,
            request_snapshot: message.request_snapshot,
            reject: message.reject,
            reject_hint: message.reject_hint,
            context: message.context.to_vec(),
            priority: message.priority,
        })
    }

    /// The raft-rs message, or why this one is refused.
    pub fn into_raft(self) -> Result<Message, String> {
        let Some(kind) = sent_kind(self.kind) else {
            return Err(format!("message kind {} is not one voters send", self.kind));
        };
        if self.request_snapshot != 0 {
            // A leader would stop replicating to the asker until it got a snapshot it cannot
            // make yet.
            return Err("a snapshot request: snapshots are not taken yet".into());
        }
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.to = self.to;
        message.from = self.from;
        message.term = self.term;
        message.log_term = self.log_term;
        message.index = self.index;
        message.entries = self.entries.into_iter().map(StoredEntry::into_raft).collect();
        message.commit = self.commit;
        message.commit_term = self.commit_term;
        message.request_snapshot = self.request_snapshot;
        message.reject = self.reject;
        message.reject_hint = self.reject_hint;
        message.context = Bytes::from(self.context);
        message.priority = self.priority;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip_and_local_kinds_are_refused() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        (message.to, message.from, message.term, message.index) = (2, 1, 7, 41);
        message.entries =
            vec![StoredEntry { index: 42, term: 7, data: vec![1, 2] }.into_raft()].into();
        message.context = Bytes::from_static(b"CampaignTransfer");
        let wire = WireMessage::from_raft(&message).expect("an append is sent");
        assert_eq!(wire.clone().into_raft().expect("and taken"), message);

        let mut hup = Message::default();
        hup.set_msg_type(MessageType::MsgHup);
        assert!(WireMessage::from_raft(&hup).is_err());
        let forged = WireMessage { kind: MessageType::MsgPropose as u8, ..wire.clone() };
        assert!(forged.into_raft().unwrap_err().contains("not one voters send"));
        assert!(WireMessage { kind: 200, ..wire }.into_raft().is_err());
    }
}
