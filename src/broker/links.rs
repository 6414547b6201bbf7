//! How this broker reaches the controller voters: two native connections per voter, made when
//! first needed and again after they break. One carries Raft messages (best effort, in the
//! order they were handed over), the other requests to the active controller and metadata
//! fetches (answered, bounded in time). They must not share one: a connection answers in
//! request order, and Raft messages queued behind a controller request that waits for its
//! decision to commit would hold back the very acknowledgements that commit it, until the
//! leader, hearing nothing, steps down. A request to this broker's own voter is not sent over
//! the network.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;

use crate::client::{Client, ClientError};
use crate::cluster::metadata::ClusterId;
use crate::cluster::node::{
    ControllerAnswer, ControllerError, ControllerRequest, Links, MetadataEntries,
};
use crate::cluster::raft_wire::WireMessage;
use crate::config::BrokerConfig;
use crate::error::{BrokerError, ErrorKind};
use crate::native::messages::ErrorCode;
use crate::shard::Shard;
use crate::types::NodeId;

/// How long connecting to a voter may take; longer counts as unreachable.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// How long a request to the controller waits for its answer (a decision waits up to 5 s for
/// its commit on the controller).
const ASK_WAIT: Duration = Duration::from_secs(6);
/// What a request that got no answer within [`ASK_WAIT`] fails with.
const NO_ANSWER: &str = "no answer in time";
/// Bytes of Raft messages waiting for one voter (about); more are dropped (Raft sends again).
const OUTBOX_BYTES_MAX: usize = 64 * 1024 * 1024;
/// About the most one request carries: several append messages (each about 256 KiB of entries,
/// or one larger entry), well under any `socket.request.max.bytes`.
const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// What a message costs besides its entries' data, roughly.
const MESSAGE_OVERHEAD_BYTES: usize = 128;

pub struct VoterLinks {
    shard: Rc<Shard>,
    me: NodeId,
    peers: BTreeMap<NodeId, Rc<Peer>>,
}

struct Peer {
    node: NodeId,
    address: String,
    /// Raft messages only.
    raft: RefCell<Option<Client>>,
    /// Controller requests and metadata fetches.
    requests: RefCell<Option<Client>>,
    /// Messages waiting to be sent, oldest first; `queued` wakes the sending task.
    outbox: RefCell<Outbox>,
    queued: Event,
}

impl VoterLinks {
    /// Links to every voter but this broker, each (on a voter) with a task sending its Raft
    /// messages.
    pub fn start(shard: Rc<Shard>, config: &BrokerConfig) -> Rc<Self> {
        let me = config.node_id;
        let mut peers = BTreeMap::new();
        for voter in config.quorum_voters.iter().filter(|v| v.node != me) {
            let address = crate::config::host_port(&voter.host, voter.port);
            let peer = Rc::new(Peer {
                node: voter.node,
                address,
                raft: RefCell::new(None),
                requests: RefCell::new(None),
                outbox: RefCell::new(Outbox::default()),
                queued: Event::new(),
            });
            // Only a voter sends Raft messages; every broker asks the voters.
            if config.is_voter() {
                glommio::spawn_local(send_messages(peer.clone(), me)).detach();
            }
            peers.insert(voter.node, peer);
        }
        Rc::new(Self { shard, me, peers })
    }
}

impl Peer {
    /// `link`'s connection (`raft` or `requests`), made when there is none.
    async fn connection(&self, link: &RefCell<Option<Client>>) -> Result<Client, ClientError> {
        if let Some(client) = link.borrow().clone() {
            return Ok(client);
        }
        let connect = async { Some(Client::connect(&self.address).await) };
        let timed_out = async {
            glommio::timer::sleep(CONNECT_WAIT).await;
            None
        };
        match futures_lite::future::or(connect, timed_out).await {
            Some(Ok(client)) => {
                *link.borrow_mut() = Some(client.clone());
                Ok(client)
            }
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Io(format!("connecting to {} timed out", self.address))),
        }
    }

    /// Forgets `link`'s connection after it failed, so the next use connects again.
    /// Drops the link after a transport error, to connect again at the next use. An error
    /// answer or a late one leaves it: the voter fences a broker whose heartbeat connection
    /// closes (`Event::HeartbeatsLost`), so a live one must not close it lightly.
    fn broken(&self, link: &RefCell<Option<Client>>, why: &ClientError) {
        let transport = match why {
            ClientError::Disconnected(why) => why != NO_ANSWER,
            // A frame that does not decode: the stream cannot be trusted after it.
            ClientError::Io(_) | ClientError::Protocol(_) => true,
            ClientError::Broker { .. } => false,
        };
        tracing::debug!(voter = %self.node, address = %self.address, transport, "link error: {why}");
        if transport {
            link.borrow_mut().take();
        }
    }
}

#[derive(Default)]
struct Outbox {
    /// The sender's cluster, once known: a voter learns it once and keeps it.
    cluster_id: Option<ClusterId>,
    messages: std::collections::VecDeque<WireMessage>,
    bytes: usize,
}

fn message_bytes(message: &WireMessage) -> usize {
    let entries: usize = message.entries.iter().map(|e| e.data.len() + 32).sum();
    let snapshot = message.snapshot.as_ref().map_or(0, |s| s.data.len());
    MESSAGE_OVERHEAD_BYTES + entries + snapshot + message.context.len()
}

impl Outbox {
    /// The oldest messages, up to about [`REQUEST_BYTES_MAX`] (at least one).
    fn take_request(&mut self) -> Vec<WireMessage> {
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.messages.front() {
            let size = message_bytes(next);
            if !taken.is_empty() && bytes + size > REQUEST_BYTES_MAX {
                break;
            }
            bytes += size;
            self.bytes -= size;
            taken.extend(self.messages.pop_front());
        }
        taken
    }
}

/// Sends what waits in the outbox, as few requests as its size allows, until the executor
/// ends.
async fn send_messages(peer: Rc<Peer>, me: NodeId) {
    loop {
        let queued = peer.queued.listen();
        let (cluster_id, batch) = {
            let mut outbox = peer.outbox.borrow_mut();
            (outbox.cluster_id, outbox.take_request())
        };
        if batch.is_empty() {
            queued.await;
            continue;
        }
        let sent = async {
            let client = peer.connection(&peer.raft).await?;
            client.voter_messages(me, cluster_id, &batch).await
        };
        if let Err(e) = bounded(sent).await {
            peer.broken(&peer.raft, &e);
        }
    }
}

async fn bounded<T>(work: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    let timed_out = async {
        glommio::timer::sleep(ASK_WAIT).await;
        Err(ClientError::Disconnected(NO_ANSWER.into()))
    };
    futures_lite::future::or(work, timed_out).await
}

impl Links for VoterLinks {
    fn send_voter_messages(
        &self,
        to: NodeId,
        cluster_id: Option<ClusterId>,
        messages: Vec<WireMessage>,
    ) {
        let Some(peer) = self.peers.get(&to) else { return };
        let mut outbox = peer.outbox.borrow_mut();
        let bytes: usize = messages.iter().map(message_bytes).sum();
        if outbox.bytes + bytes > OUTBOX_BYTES_MAX {
            tracing::debug!(voter = %to, "outbox full: Raft messages dropped");
            return;
        }
        outbox.cluster_id = cluster_id.or(outbox.cluster_id);
        outbox.bytes += bytes;
        outbox.messages.extend(messages);
        peer.queued.notify(1);
    }

    fn fetch_metadata(
        &self,
        to: NodeId,
        from: u64,
    ) -> Pin<Box<dyn Future<Output = Result<MetadataEntries, ControllerError>>>> {
        let Some(peer) = self.peers.get(&to).cloned() else {
            let why = format!("node {to} is not a controller voter");
            return Box::pin(async move { Err(unavailable(why)) });
        };
        Box::pin(async move {
            let fetched =
                async { peer.connection(&peer.requests).await?.metadata_entries(from).await };
            bounded(fetched).await.map_err(|e| {
                peer.broken(&peer.requests, &e);
                unavailable(format!("voter {to} at {}: {e}", peer.address))
            })
        })
    }

    fn ask_controller(
        &self,
        to: NodeId,
        request: ControllerRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ControllerAnswer, ControllerError>>>> {
        if to == self.me {
            let shard = self.shard.clone();
            return Box::pin(async move { shard.ask_controller(request).await });
        }
        let Some(peer) = self.peers.get(&to).cloned() else {
            let why = format!("node {to} is not a controller voter");
            return Box::pin(async move { Err(ControllerError::unsent(why)) });
        };
        Box::pin(async move {
            // Whether the request was sent: a failure before it was cannot have committed.
            // One whose connection broke after (the voter stopped or died) is sent elsewhere
            // too, as Kafka's controller channel resends it; one merely unanswered in time is
            // not: that voter may still be deciding it.
            let sent = std::cell::Cell::new(false);
            let asked = async {
                let client = peer.connection(&peer.requests).await?;
                sent.set(true);
                client.controller_request(&request).await
            };
            let response = match bounded(asked).await {
                Ok(response) => response,
                Err(e) => {
                    peer.broken(&peer.requests, &e);
                    let why = format!("voter {to} at {}: {e}", peer.address);
                    let unanswered = matches!(&e, ClientError::Disconnected(w) if w == NO_ANSWER);
                    return Err(match sent.get() && unanswered {
                        true => unavailable(why),
                        false => ControllerError::unsent(why),
                    });
                }
            };
            match (response.error.code, response.answer) {
                (ErrorCode::None, Some(answer)) => Ok(answer),
                (ErrorCode::None, None) => Err(unavailable("an answer without a body".into())),
                (code, _) => Err(ControllerError {
                    error: BrokerError::new(kind_of(code), response.error.message),
                    leader: response.leader,
                    unsent: false,
                }),
            }
        })
    }
}

fn unavailable(why: String) -> ControllerError {
    ControllerError::new(ErrorKind::NotAvailable, why)
}

/// The kinds a broker acts on or passes to its client (a topic change refused); any other
/// refusal is the controller's not being able to answer now.
fn kind_of(code: ErrorCode) -> ErrorKind {
    match code {
        ErrorCode::NotController => ErrorKind::NotController,
        ErrorCode::StaleBrokerEpoch => ErrorKind::StaleBrokerEpoch,
        ErrorCode::DuplicateBrokerRegistration => ErrorKind::DuplicateBrokerRegistration,
        ErrorCode::InconsistentClusterId => ErrorKind::InconsistentClusterId,
        ErrorCode::UnsupportedApi => ErrorKind::UnsupportedApi,
        ErrorCode::PolicyViolation => ErrorKind::PolicyViolation,
        ErrorCode::TopicAlreadyExists => ErrorKind::TopicAlreadyExists,
        ErrorCode::UnknownTopic => ErrorKind::UnknownTopic,
        ErrorCode::InvalidPartitions => ErrorKind::InvalidPartitions,
        ErrorCode::InvalidReplicationFactor => ErrorKind::InvalidReplicationFactor,
        ErrorCode::InvalidReplicaAssignment => ErrorKind::InvalidReplicaAssignment,
        ErrorCode::InvalidConfig => ErrorKind::InvalidConfig,
        ErrorCode::InvalidTopicName => ErrorKind::InvalidTopicName,
        ErrorCode::FencedLeaderEpoch => ErrorKind::FencedLeaderEpoch,
        ErrorCode::InvalidUpdateVersion => ErrorKind::InvalidUpdateVersion,
        ErrorCode::IneligibleReplica => ErrorKind::IneligibleReplica,
        ErrorCode::UnknownLeaderEpoch => ErrorKind::UnknownLeaderEpoch,
        ErrorCode::NotLeaderOrFollower => ErrorKind::NotLeaderOrFollower,
        ErrorCode::NoReassignmentInProgress => ErrorKind::NoReassignmentInProgress,
        _ => ErrorKind::NotAvailable,
    }
}
