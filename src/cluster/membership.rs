//! A broker's membership of the cluster: it registers with the active controller, heartbeats
//! while it runs, and says goodbye (a controlled shutdown) when it stops cleanly.
//!
//! The broker finds the controller by asking the voters: one that is not the active controller
//! answers NOT_CONTROLLER with the one it knows, which is asked next. Each process registers
//! with an incarnation of its own, so a lost answer to a registration can be asked again
//! without a second registration, and a new process is told apart from the old one (refused
//! while the old one's session lives: DUPLICATE_BROKER_REGISTRATION, as in KRaft). A heartbeat
//! refused with STALE_BROKER_EPOCH (the controller fenced this broker for its silence and it
//! registered again under another epoch, or the log lost the registration) registers anew.
//! Each heartbeat also says whether the broker's disk is refusing its writes
//! (`log/health.rs`): the controller fences the broker meanwhile, so its partitions go on
//! without it (KIP-858's failed log directory, for a broker of one directory).
//!
//! The registration's answer names the cluster; a broker whose data directory joined no cluster
//! before records it there (`identity.rs`), and one whose directory belongs to another cluster is
//! refused (INCONSISTENT_CLUSTER_ID) and stops.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::identity::{self, DirIdentity};
use super::metadata::{ClusterId, Endpoints, Registration, CLUSTER_PROTOCOL_VERSION};
use super::node::{ControllerAnswer, ControllerError, ControllerRequest, Links, DECISION_WAIT};
use crate::error::{BrokerError, ErrorKind};
use crate::log::health::StorageHealth;
use crate::types::NodeId;

/// How long a broker waits before asking again after no voter could answer.
const RETRY_WAIT: Duration = Duration::from_millis(200);
/// How long a request that needs the broker registered waits for it.
const REGISTRATION_WAIT: Duration = Duration::from_secs(5);
/// How long a controlled shutdown may hold up a stopping broker.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// A broker fenced for a full disk writes nothing of its logs, so before each heartbeat it writes
/// this much of its own into the data directory, synced, then removed: taken, there is space
/// again. About one produce request's worth.
const SPACE_PROBE_BYTES: usize = 256 * 1024;
const SPACE_PROBE_FILE: &str = ".spate-space-probe";

pub struct Membership {
    me: NodeId,
    incarnation: u64,
    rack: Option<String>,
    endpoints: Endpoints,
    voters: Vec<NodeId>,
    links: Rc<dyn Links>,
    heartbeat_interval: Duration,
    /// The voter asked last: the active controller, as far as this broker knows.
    target: Cell<usize>,
    /// This broker's registration, once the controller has answered it.
    broker_epoch: Cell<Option<u64>>,
    fenced: Cell<bool>,
    data_dir: PathBuf,
    /// The data directory's id ([`DirIdentity::directory`]).
    directory: u128,
    min_insync_replicas: Option<u16>,
    /// The cluster the data directory belongs to, once known (shared by the broker's shards).
    dir_cluster: Arc<OnceLock<ClusterId>>,
    /// Producer ids the controller gave this broker and it has not handed out yet.
    producer_ids: RefCell<Range<i64>>,
    /// One block asked for at a time.
    allocating: glommio::sync::Semaphore,
    /// The broker is stopping: its controlled shutdown is under way or done.
    stopping: Cell<bool>,
    /// When registrations began to be refused as another broker's, if they are.
    refused_since: RefCell<Option<std::time::Instant>>,
    session_timeout: Duration,
    /// When the last request for a block failed, and why.
    allocation_failed: RefCell<Option<(std::time::Instant, String)>>,
    storage_health: Arc<StorageHealth>,
    /// Whether the last heartbeat said the storage was failing.
    storage_failing: Cell<bool>,
}

/// Where a broker finds its voters and keeps what it learns of its cluster.
pub struct Joining {
    pub voters: Vec<NodeId>,
    pub links: Rc<dyn Links>,
    pub heartbeat_interval: Duration,
    /// How long a refusal as another broker's may last before this one gives up.
    pub session_timeout: Duration,
    pub data_dir: PathBuf,
    pub directory: u128,
    pub dir_cluster: Arc<OnceLock<ClusterId>>,
    /// This broker's `min.insync.replicas` default, announced with its registration.
    pub min_insync_replicas: Option<u16>,
    /// What the broker's writes met: each heartbeat says whether its storage is failing.
    pub storage_health: Arc<StorageHealth>,
}

impl Membership {
    pub fn new(me: NodeId, rack: Option<String>, endpoints: Endpoints, joining: Joining) -> Self {
        let Joining {
            voters,
            links,
            heartbeat_interval,
            session_timeout,
            data_dir,
            directory,
            dir_cluster,
            min_insync_replicas,
            storage_health,
        } = joining;
        // The process's start time in nanoseconds: another process of this node gets another.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            me,
            incarnation,
            rack,
            endpoints,
            voters,
            links,
            heartbeat_interval,
            target: Cell::new(0),
            broker_epoch: Cell::new(None),
            fenced: Cell::new(true),
            data_dir,
            directory,
            min_insync_replicas,
            dir_cluster,
            producer_ids: RefCell::new(0..0),
            allocating: glommio::sync::Semaphore::new(1),
            allocation_failed: RefCell::new(None),
            refused_since: RefCell::new(None),
            stopping: Cell::new(false),
            session_timeout,
            storage_health,
            storage_failing: Cell::new(false),
        }
    }

    /// A producer id no other producer in the cluster has: from this broker's block, or from a
    /// new one the controller gives it (KIP-730). Refused while the broker is not registered
    /// or no controller answers: the client asks again.
    pub async fn next_producer_id(&self) -> Result<i64, BrokerError> {
        if let Some(id) = self.producer_ids.borrow_mut().next() {
            return Ok(id);
        }
        // A broker just started registers within moments: a producer that came as fast waits
        // for it rather than retry (each waiter on its own, not in turn).
        let deadline = std::time::Instant::now() + REGISTRATION_WAIT;
        while self.broker_epoch.get().is_none() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let _one_at_a_time = self.allocating.acquire_permit(1).await.map_err(|_| {
            BrokerError::new(ErrorKind::CoordinatorNotAvailable, "the broker is stopping")
        })?;
        if self.producer_ids.borrow().is_empty() {
            // Callers queued behind a failed allocation fail at once rather than each wait
            // out another.
            if let Some((at, why)) = self.allocation_failed.borrow().as_ref() {
                if at.elapsed() < RETRY_WAIT {
                    return Err(BrokerError::new(ErrorKind::CoordinatorNotAvailable, why.clone()));
                }
            }
            let Some(broker_epoch) = self.broker_epoch.get() else {
                let why = "this broker has not registered with the controller yet";
                return Err(BrokerError::new(ErrorKind::CoordinatorNotAvailable, why));
            };
            let request = ControllerRequest::AllocateProducerIds { node: self.me, broker_epoch };
            match self.ask(request).await {
                Ok(ControllerAnswer::ProducerIds { first, count }) => {
                    tracing::debug!(first, count, "a block of producer ids from the controller");
                    *self.producer_ids.borrow_mut() = first..first.saturating_add(count);
                }
                Ok(other) => {
                    let why = format!("producer ids answered with {other:?}");
                    return Err(BrokerError::new(ErrorKind::CoordinatorNotAvailable, why));
                }
                Err(e) => {
                    let why = format!("no producer ids from the controller: {}", e.error);
                    *self.allocation_failed.borrow_mut() =
                        Some((std::time::Instant::now(), why.clone()));
                    // Every id handed out is final; anything else the client asks again for.
                    let kind = match e.error.kind {
                        ErrorKind::PolicyViolation => ErrorKind::PolicyViolation,
                        _ => ErrorKind::CoordinatorNotAvailable,
                    };
                    return Err(BrokerError::new(kind, why));
                }
            }
        }
        let mut block = self.producer_ids.borrow_mut();
        let id = block.next().ok_or_else(|| {
            BrokerError::new(ErrorKind::CoordinatorNotAvailable, "an empty producer id block")
        })?;
        Ok(id)
    }

    /// Registers, then heartbeats, until `stop`; or until the broker turns out to be of
    /// another cluster, which it must not serve.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<(), String> {
        let beat = async {
            loop {
                if self.stopping.get() {
                    glommio::timer::sleep(self.heartbeat_interval).await;
                    continue;
                }
                let wait = match self.broker_epoch.get() {
                    None => {
                        self.register().await?;
                        match self.broker_epoch.get() {
                            // Registered: its first heartbeat unfences it at once.
                            Some(_) => Duration::ZERO,
                            // Not registered yet (no controller elected, say): soon again.
                            None => RETRY_WAIT.min(self.heartbeat_interval),
                        }
                    }
                    Some(broker_epoch) => {
                        self.heartbeat(broker_epoch).await;
                        self.heartbeat_interval
                    }
                };
                glommio::timer::sleep(wait).await;
            }
        };
        let stopped = async {
            stop.await;
            Ok(())
        };
        futures_lite::future::or(beat, stopped).await
    }

    async fn register(&self) -> Result<(), String> {
        let registration = Registration {
            node: self.me,
            incarnation: self.incarnation,
            directory: self.directory,
            rack: self.rack.clone(),
            endpoints: self.endpoints.clone(),
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            min_insync_replicas: self.min_insync_replicas,
        };
        let cluster_id = self.dir_cluster.get().copied();
        let request = ControllerRequest::Register { registration, cluster_id };
        match self.ask(request).await {
            Ok(ControllerAnswer::Registered { broker_epoch, cluster_id }) => {
                self.join(cluster_id).await?;
                tracing::info!(
                    node = %self.me,
                    broker_epoch,
                    %cluster_id,
                    "registered with the controller"
                );
                self.broker_epoch.set(Some(broker_epoch));
                self.refused_since.borrow_mut().take();
            }
            // Neither changes by asking again: this broker must not serve.
            Err(e) if e.error.kind == ErrorKind::InconsistentClusterId => {
                return Err(e.error.message);
            }
            Err(e) if e.error.kind == ErrorKind::UnsupportedApi => return Err(e.error.message),
            Ok(other) => tracing::warn!("registration answered with {other:?}"),
            // Another broker, on another data directory, holds the node id and is alive. It may
            // be this node's previous process on a disk since replaced, whose session lapses
            // soon: ask again, and stop only once the refusal outlasts a session.
            Err(e) if e.error.kind == ErrorKind::DuplicateBrokerRegistration => {
                let since =
                    *self.refused_since.borrow_mut().get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > self.session_timeout {
                    return Err(format!(
                        "node.id {} is held by a live broker on another data directory ({}): \
                         give each broker its own node.id",
                        self.me, e.error.message
                    ));
                }
                tracing::warn!(node = %self.me, "registration refused, asking again: {}", e.error);
            }
            Err(e) => tracing::debug!(node = %self.me, "registering: {}", e.error),
        }
        Ok(())
    }

    /// Records the cluster in the data directory the first time the broker joins one.
    async fn join(&self, cluster_id: ClusterId) -> Result<(), String> {
        if let Some(known) = self.dir_cluster.get() {
            return match *known == cluster_id {
                true => Ok(()),
                false => Err(format!(
                    "the controller answered for cluster {cluster_id}; this data directory \
                     belongs to cluster {known}"
                )),
            };
        }
        let identity =
            DirIdentity { cluster_id: Some(cluster_id), node: self.me, directory: self.directory };
        let dir = self.data_dir.clone();
        glommio::executor()
            .spawn_blocking(move || identity::write(&dir, identity))
            .await
            .map_err(|e| format!("recording the cluster in {}: {e}", self.data_dir.display()))?;
        tracing::info!(%cluster_id, "this data directory joined the cluster");
        let _ = self.dir_cluster.set(cluster_id);
        Ok(())
    }

    async fn heartbeat(&self, broker_epoch: u64) {
        if self.storage_health.only_refused() {
            self.probe_space().await;
        }
        let failing = self.storage_health.failing();
        if self.storage_failing.replace(failing.is_some()) != failing.is_some() {
            match failing {
                Some(why) => {
                    tracing::warn!(node = %self.me, "the storage is failing ({why}): asking to be fenced until it takes writes again")
                }
                None => tracing::info!(node = %self.me, "the storage takes writes again"),
            }
        }
        let storage_failing = failing.is_some();
        let beat = ControllerRequest::Heartbeat { node: self.me, broker_epoch, storage_failing };
        match self.ask(beat).await {
            Ok(ControllerAnswer::HeartbeatTaken { fenced }) => {
                if self.fenced.replace(fenced) != fenced {
                    let now = if fenced { "fenced" } else { "unfenced: it may lead partitions" };
                    tracing::info!(node = %self.me, "the controller has this broker {now}");
                }
            }
            Ok(other) => tracing::warn!("heartbeat answered with {other:?}"),
            Err(e) if e.error.kind == ErrorKind::StaleBrokerEpoch => {
                tracing::warn!(node = %self.me, "registering again: {}", e.error.message);
                self.broker_epoch.set(None);
                self.fenced.set(true);
            }
            Err(e) => tracing::debug!(node = %self.me, "heartbeat: {}", e.error),
        }
    }

    /// Writes, syncs and removes [`SPACE_PROBE_BYTES`] in the data directory: taken, the storage
    /// has space again.
    async fn probe_space(&self) {
        let path = self.data_dir.join(SPACE_PROBE_FILE);
        let probed = glommio::executor()
            .spawn_blocking(move || {
                let written = std::fs::File::create(&path).and_then(|mut file| {
                    std::io::Write::write_all(&mut file, &vec![0u8; SPACE_PROBE_BYTES])?;
                    file.sync_data()
                });
                let _ = std::fs::remove_file(&path);
                written
            })
            .await;
        match probed {
            Ok(()) => self.storage_health.write_taken(),
            Err(e) => tracing::debug!(node = %self.me, "no space yet: {e}"),
        }
    }

    /// Tells the controller this broker is stopping, so its partitions move at once rather
    /// than after its session times out. Bounded: a stop is not held up by a lost quorum.
    pub async fn shut_down(&self) {
        // From here the heartbeat loop neither beats nor registers again: the registration
        // this ends must stay ended.
        self.stopping.set(true);
        let Some(broker_epoch) = self.broker_epoch.get() else { return };
        let request = ControllerRequest::ControlledShutdown { node: self.me, broker_epoch };
        let asked = async {
            loop {
                match self.ask(request.clone()).await {
                    Ok(_) => return true,
                    Err(e) if e.error.kind == ErrorKind::StaleBrokerEpoch => return true,
                    Err(e) => tracing::debug!("controlled shutdown: {}", e.error),
                }
                glommio::timer::sleep(RETRY_WAIT).await;
            }
        };
        let timed_out = async {
            glommio::timer::sleep(SHUTDOWN_WAIT).await;
            false
        };
        match futures_lite::future::or(asked, timed_out).await {
            true => tracing::info!(node = %self.me, "controlled shutdown done"),
            false => tracing::warn!(node = %self.me, "controlled shutdown not answered in time"),
        }
    }

    /// This process's registration: what the metadata names it by once it has joined.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// A request of the broker's own (a client's topic change, forwarded) to the active
    /// controller. While the voters elect one (the last one stopped, say) they answer
    /// NOT_CONTROLLER: asked again until a session timeout has passed, as Kafka's forwarding
    /// manager keeps a forwarded request until its timeout, so the client gets the new
    /// controller's answer rather than a retriable error it may not retry. Only that refusal
    /// is asked again: a request that went unanswered may have committed, and a second one
    /// would be refused for what the first did.
    pub async fn ask_controller(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerAnswer, ControllerError> {
        let deadline = Instant::now() + self.session_timeout;
        loop {
            match self.ask_with(request.clone(), Patience::Forwarded).await {
                Err(e) if e.error.kind == ErrorKind::NotController && Instant::now() < deadline => {
                    glommio::timer::sleep(RETRY_WAIT).await;
                }
                answered => return answered,
            }
        }
    }

    /// Asks the active controller for the broker's own business (registration, heartbeats,
    /// producer ids): `ask_with` of [`Patience::Membership`].
    async fn ask(&self, request: ControllerRequest) -> Result<ControllerAnswer, ControllerError> {
        self.ask_with(request, Patience::Membership).await
    }

    /// Asks the active controller, following NOT_CONTROLLER answers to the one a voter names
    /// and trying each voter in turn when none is named, once round the voters. With
    /// [`Patience::Forwarded`], a request that was sent and went unanswered is not sent to
    /// another voter: it may still commit, and a second one would be refused for what the first
    /// did (TOPIC_ALREADY_EXISTS for a client's own create).
    async fn ask_with(
        &self,
        request: ControllerRequest,
        patience: Patience,
    ) -> Result<ControllerAnswer, ControllerError> {
        // A stalled voter must not hold the broker past its session: each attempt of its own
        // gets a third of it before the next voter is asked. A forwarded request waits out the
        // controller's own deadline for a decision, which then answers first.
        let attempt_wait = match patience {
            Patience::Membership => self.session_timeout / 3,
            Patience::Forwarded => DECISION_WAIT + RETRY_WAIT,
        };
        let mut last = None;
        for _ in 0..=self.voters.len() {
            let Some(&target) = self.voters.get(self.target.get() % self.voters.len().max(1))
            else {
                break;
            };
            let asked = async { Some(self.links.ask_controller(target, request.clone()).await) };
            let timed_out = async {
                glommio::timer::sleep(attempt_wait).await;
                None
            };
            let answer = futures_lite::future::or(asked, timed_out).await.unwrap_or_else(|| {
                let why = format!("voter {target} did not answer in time");
                Err(ControllerError::new(ErrorKind::NotAvailable, why))
            });
            match answer {
                Ok(answer) => return Ok(answer),
                Err(e) if e.error.kind == ErrorKind::NotController => {
                    match e.leader.and_then(|l| self.voters.iter().position(|v| *v == l)) {
                        Some(leader) if leader != self.target.get() => self.target.set(leader),
                        _ => {
                            self.next_voter();
                            glommio::timer::sleep(RETRY_WAIT).await;
                        }
                    }
                    last = Some(e);
                }
                Err(e) if patience == Patience::Forwarded && !e.unsent => return Err(e),
                Err(e) if e.error.kind == ErrorKind::NotAvailable => {
                    self.next_voter();
                    glommio::timer::sleep(RETRY_WAIT).await;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ControllerError::new(ErrorKind::NotController, "no voters")))
    }

    fn next_voter(&self) {
        self.target.set((self.target.get() + 1) % self.voters.len().max(1));
    }
}

/// How a request to the controller is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Patience {
    /// The broker's own membership: a stalled voter gets a third of a session, then the next
    /// is asked (a repeated heartbeat or registration is harmless).
    Membership,
    /// A client's request, forwarded: asked again of another voter only if never sent.
    Forwarded,
}
