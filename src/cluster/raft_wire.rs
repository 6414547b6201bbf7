//! The voters' Raft log entries and messages in Spate's own forms, for the disk and the wire.
//!
//! raft-rs hands out protobuf structs (rust-protobuf 2). Spate does not put those on the wire or
//! the disk: its own rkyv forms carry exactly the fields Spate's Raft uses, are validated when
//! read like every other input (an unknown message kind, a configuration change or a message
//! only a voter itself may make is refused by name), and keep protobuf's parser, with
//! its open advisory on deeply nested input (RUSTSEC-2024-0437), off every path from the network.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use rkyv::{Archive, Deserialize, Serialize};

/// One entry of the voters' log: a metadata batch (`metadata::encode_batch`), or empty (the
/// entry a new leader appends to commit its term).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct StoredEntry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// A snapshot of the metadata log: the image (`MetadataImage::encode_snapshot`) as of entry
/// `index` of term `term`, which stands for every entry up to it, and the voter set it was
/// taken under.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub data: Vec<u8>,
}

impl StoredSnapshot {
    pub fn from_raft(snapshot: &Snapshot) -> Self {
        let metadata = snapshot.get_metadata();
        Self {
            index: metadata.index,
            term: metadata.term,
            voters: metadata.get_conf_state().voters.clone(),
            data: snapshot.data.to_vec(),
        }
    }

    pub fn into_raft(self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        (metadata.index, metadata.term) = (self.index, self.term);
        metadata.set_conf_state(ConfState::from((self.voters, vec![])));
        snapshot.data = Bytes::from(self.data);
        snapshot
    }
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
    /// What a leader sends a voter that lags behind its log's start (a `MsgSnapshot`).
    pub snapshot: Option<StoredSnapshot>,
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
/// heartbeat, a proposal, which only the leader takes here, a snapshot's status), ask for a
/// snapshot (Spate's voters never do: a leader sends one when a voter lags behind its log's
/// start), or serve read-index reads, which Spate does not make.
const SENT_KINDS: [MessageType; 11] = [
    MessageType::MsgSnapshot,
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
        let snapshot = match (kind, message.snapshot.as_ref()) {
            (MessageType::MsgSnapshot, Some(snapshot)) => Some(StoredSnapshot::from_raft(snapshot)),
            (MessageType::MsgSnapshot, None) => return Err("a snapshot message without one".into()),
            (_, Some(snapshot)) if !snapshot.is_empty() => {
                return Err(format!("a {kind:?} carries a snapshot"))
            }
            (_, _) => None,
        };
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
            snapshot,
        })
    }

    /// The raft-rs message, or why this one is refused.
    pub fn into_raft(self) -> Result<Message, String> {
        let Some(kind) = sent_kind(self.kind) else {
            return Err(format!("message kind {} is not one voters send", self.kind));
        };
        if self.request_snapshot != 0 {
            // Spate's voters never ask: a leader would stop replicating to the asker until it
            // had sent one.
            return Err("a snapshot request, which voters here never make".into());
        }
        match (kind, self.snapshot.is_some()) {
            (MessageType::MsgSnapshot, false) => {
                return Err("a snapshot message without one".into())
            }
            (MessageType::MsgSnapshot, true) | (_, false) => {}
            (_, true) => return Err(format!("a {kind:?} carrying a snapshot")),
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
        if let Some(snapshot) = self.snapshot {
            message.set_snapshot(snapshot.into_raft());
        }
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
        assert!(WireMessage { kind: 200, ..wire.clone() }.into_raft().is_err());

        // A snapshot travels only in a snapshot message.
        let stored = StoredSnapshot { index: 40, term: 6, voters: vec![1, 2, 3], data: vec![9] };
        let mut snap = Message::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        (snap.to, snap.from, snap.term) = (2, 1, 7);
        snap.set_snapshot(stored.clone().into_raft());
        let wire_snap = WireMessage::from_raft(&snap).expect("a snapshot is sent");
        assert_eq!(wire_snap.snapshot.as_ref(), Some(&stored));
        assert_eq!(wire_snap.clone().into_raft().expect("and taken"), snap);
        let bare = WireMessage { snapshot: None, ..wire_snap };
        assert!(bare.into_raft().unwrap_err().contains("without one"));
        let smuggled = WireMessage { snapshot: Some(stored), ..wire };
        assert!(smuggled.into_raft().unwrap_err().contains("carrying a snapshot"));
    }
}
