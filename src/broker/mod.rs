//! Starting and stopping the broker: one pinned executor per core, then an ordered shutdown.
//!
//! Stop sequence, on SIGINT or SIGTERM (a second signal exits at once):
//! 0. shard 0 leaves the cluster (a controlled shutdown, then handing the controller role over
//!    if it holds it) while every shard still serves;
//! 1. every shard stops accepting and lets its connections finish their in-flight requests;
//! 2. a barrier: no shard goes on until none can forward a request to another;
//! 3. every shard writes, fdatasyncs and closes its partitions;
//! 4. the main thread merges the shards' histograms and prints them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use hdrhistogram::Histogram;

use crate::cluster::applied::AppliedMetadata;
use crate::cluster::decide::{LeaderBalance, PartitionLimits};
use crate::cluster::follower::MetadataFollower;
use crate::cluster::identity::{self, DirIdentity};
use crate::cluster::membership::{Joining, Membership};
use crate::cluster::metadata::Endpoints;
use crate::cluster::node::{ControllerNode, ControllerSettings};
use crate::config::BrokerConfig;
use crate::group::offsets::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::log::health::StorageHealth;
use crate::log::probe;
use crate::log::queued::QueuedBytes;
use crate::metrics::{self, Listener};
use crate::shard::call::MeshMessage;
use crate::shard::catalog::{self, DiskTopic};
use crate::shard::mesh::{self, MeshEnds};

use crate::shard::state::BrokerWide;
use crate::shard::{Shard, CONTROLLER_SHARD};
use crate::types::{NodeId, ShardId};

mod links;
mod listen_check;
mod metrics_endpoint;
mod replica_fetcher;
mod replica_stream;

/// Calls waiting in one direction of the mesh before senders wait.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// The longest shard 0 takes to leave the cluster at a stop (controlled shutdown, then handing
/// the controller over), with room to spare.
const LEAVE_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long connections get to finish in-flight requests once a stop begins.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often a shard looks at the process-wide stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);
const LOCK_FILE: &str = ".lock";
/// How long a starting broker waits for another socket to stop listening on its ports.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(10);

type Snapshot = BTreeMap<String, Histogram<u64>>;

/// Process-wide start and stop state, shared by the signal thread and the shards.
#[derive(Default)]
struct Stopper {
    requested: AtomicBool,
    opened: AtomicUsize,
    drained: AtomicUsize,
    closed: AtomicUsize,
    /// Why the broker stopped by itself, if it did: the process's error.
    failure: Mutex<Option<String>>,
    /// Shard 0 has left the cluster (controlled shutdown, controller handed over).
    left_cluster: AtomicBool,
}

impl Stopper {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Stops the broker because it cannot go on; it exits with `why` as its error.
    fn fail(&self, why: String) {
        tracing::error!("{why}; stopping");
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(why);
        self.request();
    }

    async fn wait_requested(&self) {
        while !self.requested.load(Ordering::SeqCst) {
            glommio::timer::sleep(STOP_POLL_INTERVAL).await;
        }
    }

    /// Waits (bounded by what leaving takes) until shard 0 has left the cluster.
    async fn wait_left_cluster(left: &AtomicBool) {
        let deadline = std::time::Instant::now() + LEAVE_WAIT_MAX;
        while !left.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Arrives at a barrier and waits for every shard.
    async fn barrier(counter: &AtomicUsize, shards: usize) {
        counter.fetch_add(1, Ordering::SeqCst);
        while counter.load(Ordering::SeqCst) < shards {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Runs the broker until it is told to stop; then prints the latency histograms.
pub fn run(config: BrokerConfig, histogram_dir: Option<PathBuf>) -> Result<(), String> {
    let _lock = prepare_data_dir(&config.data_dir)?;
    // The cluster this directory joined, if it joined one: another node's is refused here, and
    // another cluster's when the broker registers.
    let dir_cluster = Arc::new(OnceLock::new());
    let directory = match identity::read(&config.data_dir)? {
        Some(found) => {
            identity::check_node(&config.data_dir, &found, config.node_id)?;
            if let Some(cluster_id) = found.cluster_id {
                let _ = dir_cluster.set(cluster_id);
            }
            found.directory
        }
        None => {
            // The directory's id is on disk before the broker first registers: a restart is
            // then always the same broker to the controller.
            let new = DirIdentity {
                cluster_id: None,
                node: config.node_id,
                directory: uuid::Uuid::new_v4().as_u128(),
            };
            identity::write(&config.data_dir, new).map_err(|e| {
                format!("writing {}: {e}", config.data_dir.join(identity::IDENTITY_FILE).display())
            })?;
            new.directory
        }
    };
    let disk = catalog::load(&config.data_dir, &config.topic_defaults)
        .map_err(|e| format!("reading topics in {}: {e}", config.data_dir.display()))?;
    let cores = match &config.cores {
        Some(cores) => cores.clone(),
        None => CpuSet::online().map_err(|e| e.to_string())?.iter().map(|l| l.cpu).collect(),
    };
    let placement = pinned_placement(&cores)?;
    listen_check::wait_until_free(config.native_listener, "native", PORT_RELEASE_WAIT)?;
    listen_check::wait_until_free(config.kafka_listener, "Kafka", PORT_RELEASE_WAIT)?;
    if let Some(metrics) = config.metrics_listener {
        listen_check::wait_until_free(metrics, "metrics", PORT_RELEASE_WAIT)?;
    }
    let shards = cores.len();
    let stopper = Arc::new(Stopper::default());
    install_signal_handler(stopper.clone())?;
    tracing::info!(shards, ?cores, data_dir = %config.data_dir.display(), "starting spate");
    raise_open_files_limit();

    let queued = Arc::new(QueuedBytes::new(config.queued_max_request_bytes));
    let storage_health = Arc::new(StorageHealth::default());
    let config = Arc::new(config);
    let mesh = Arc::new(mesh::full(shards, MESH_CHANNEL_CAPACITY));
    let cores = Arc::new(cores);
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("spate-shard")
        .on_all_shards({
            let stopper = stopper.clone();
            move || {
                let (config, disk, stopper) = (config.clone(), disk.clone(), stopper.clone());
                let broker_wide = BrokerWide {
                    queued: queued.clone(),
                    storage_health: storage_health.clone(),
                    cluster_id: dir_cluster.clone(),
                };
                // Shard N on the Nth core of `--cores`, as the log lines say.
                let here = current_cpu().and_then(|cpu| cores.iter().position(|c| *c == cpu));
                let ends = mesh::take(&mesh, here);
                async move {
                    let joined = Joined { stopper, directory };
                    shard_main(config, disk, ends, shards, joined, broker_wide).await
                }
            }
        })
        .map_err(|e| format!("starting executors: {e}"))?;

    let mut snapshots = Vec::new();
    let mut failures = Vec::new();
    for result in handles.join_all() {
        match result {
            Ok(Ok(snapshot)) => snapshots.push(snapshot),
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("shard thread failed: {e}")),
        }
    }
    report_histograms(metrics::merge(snapshots), histogram_dir.as_deref())?;
    let stopped_by_itself = stopper.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    failures.extend(stopped_by_itself);
    match failures.is_empty() {
        true => Ok(()),
        false => Err(failures.join("; ")),
    }
}

/// The CPU this thread runs on; a shard's thread is pinned to one.
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reports the calling thread's CPU.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Every connection and every segment file is a descriptor, and a soft limit of 1024 (Debian's
/// default) would cap the broker near a thousand connections: raise it to the hard limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!("reading the open-files limit: {}", std::io::Error::last_os_error());
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!("raising the open-files limit: {}", std::io::Error::last_os_error());
        }
    }
    tracing::info!(open_files = limit.rlim_cur, "open-files limit");
}

fn pinned_placement(cores: &[usize]) -> Result<PoolPlacement, String> {
    let online = CpuSet::online().map_err(|e| format!("reading online CPUs: {e}"))?;
    let mut sets = Vec::with_capacity(cores.len());
    for &cpu in cores {
        let set = online.clone().filter(|l| l.cpu == cpu);
        if set.is_empty() {
            return Err(format!("CPU {cpu} in --cores is not online"));
        }
        sets.push(set);
    }
    Ok(PoolPlacement::Custom(sets))
}

/// Creates the data directory, takes its lock and writes the probe file. Blocking: runs
/// before the shards start.
fn prepare_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    let context = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| context("creating data directory", e))?;
    let lock =
        std::fs::File::create(dir.join(LOCK_FILE)).map_err(|e| context("opening lock in", e))?;
    lock.try_lock().map_err(|_| {
        format!("data directory {} is in use by another spate process", dir.display())
    })?;
    probe::write_probe_file(dir).map_err(|e| context("writing probe file in", e))?;
    Ok(lock)
}

fn install_signal_handler(stopper: Arc<Stopper>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || {
            for (count, signal) in signals.forever().enumerate() {
                if count == 0 {
                    tracing::info!(signal, "stopping: finishing requests, then flushing");
                    stopper.request();
                } else {
                    tracing::warn!(signal, "second signal: exiting without a clean stop");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(())
}

/// What every shard shares of the process: its stop, the cluster its data directory belongs to
/// once known, and the directory's id.
struct Joined {
    stopper: Arc<Stopper>,
    directory: u128,
}

async fn shard_main(
    config: Arc<BrokerConfig>,
    disk: BTreeMap<String, DiskTopic>,
    ends: Option<MeshEnds<MeshMessage>>,
    shards: usize,
    joined: Joined,
    broker_wide: BrokerWide,
) -> Result<Snapshot, String> {
    let Joined { stopper, directory } = joined;
    probe::probe_device(&config.data_dir).await;
    let ends = ends.ok_or("more shards started than the mesh has ends")?;
    let id = ends.id();
    let (peers, receivers) = match shards > 1 {
        true => {
            let (peers, receivers) = ends.connect().await;
            (Some(peers), receivers)
        }
        false => (None, Vec::new()),
    };
    let shard = Rc::new(Shard::new(id, shards, config.clone(), &disk, peers, broker_wide));
    serve_mesh(&shard, receivers);
    let opened = shard
        .open_owned_partitions(&disk)
        .await
        .map_err(|e| format!("shard {id}: opening partitions: {e}"));
    // Groups' committed offsets are replayed once the metadata has this broker lead their
    // partitions (`Shard::coordinate_led_offsets_partitions`).
    //
    // No shard accepts connections until every shard has its partitions open: a request
    // forwarded to a shard still recovering would find the topic but not the partition.
    Stopper::barrier(&stopper.opened, shards).await;
    let bind = |addr: std::net::SocketAddr, what: &str| {
        TcpListener::bind(addr).map_err(|e| format!("shard {id}: {what} listener on {addr}: {e}"))
    };
    let started = opened.and_then(|()| {
        let scrapes = match id == CONTROLLER_SHARD {
            true => metrics_endpoint::bind(&shard).map_err(|e| format!("shard {id}: {e}"))?,
            false => None,
        };
        let native = bind(config.native_listener, "native")?;
        Ok((native, bind(config.kafka_listener, "Kafka")?, scrapes))
    });
    let (native, kafka, scrapes) = match started {
        Ok(listeners) => listeners,
        Err(e) => {
            // Let the other shards stop too, and do not leave them waiting at the barriers.
            stopper.request();
            if id == CONTROLLER_SHARD {
                // Shard 0 will not leave the cluster: the others need not wait for it.
                stopper.left_cluster.store(true, Ordering::SeqCst);
            }
            stopper.drained.fetch_add(1, Ordering::SeqCst);
            shard.close_partitions().await;
            stopper.closed.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
    };
    tracing::info!(
        shard = %id,
        native = %config.native_listener,
        kafka = %config.kafka_listener,
        "listeners ready"
    );
    if id == CONTROLLER_SHARD {
        tracing::info!("Kafka APIs served: {}", crate::kafka::versions::describe());
    }
    let connections = Rc::new(crate::transport::Connections::default());
    let native_acceptor = glommio::spawn_local(crate::transport::accept_loop(
        shard.clone(),
        (native, Listener::Native),
        connections.clone(),
        crate::native::server::serve_connection,
    ));
    let kafka_acceptor = glommio::spawn_local(crate::transport::accept_loop(
        shard.clone(),
        (kafka, Listener::Kafka),
        connections.clone(),
        crate::kafka::server::serve_connection,
    ));
    let scrapes = scrapes.map(|l| glommio::spawn_local(metrics_endpoint::serve(shard.clone(), l)));
    glommio::spawn_local(retention_loop(shard.clone())).detach();
    glommio::spawn_local(group_timers(shard.clone())).detach();
    glommio::spawn_local(replica_fetcher::run_replica_fetchers(shard.clone())).detach();
    glommio::spawn_local(shard.clone().run_isr_changes()).detach();
    let cluster = match id == CONTROLLER_SHARD {
        true => Some(join_cluster(&shard, &stopper, directory).await),
        false => None,
    };

    stopper.wait_requested().await;
    if let Some(membership) = cluster.as_ref().and_then(|c| c.membership.as_ref()) {
        // Before anything stops: the controller moves this broker's work elsewhere now.
        membership.shut_down().await;
    }
    if let Some(node) = cluster.as_ref().and_then(|c| c.node.as_ref()) {
        node.resign().await;
    }
    if id == CONTROLLER_SHARD {
        stopper.left_cluster.store(true, Ordering::SeqCst);
    } else {
        // Every shard keeps serving (peers' Raft answers and controller requests reach shard 0
        // through them, clients until leadership has moved) while shard 0 leaves the cluster.
        Stopper::wait_left_cluster(&stopper.left_cluster).await;
    }
    shard.begin_stop();
    if let Some(voter) = cluster.and_then(|c| c.voter) {
        // The voter closes its log before the shard's executor ends.
        voter.await;
    }
    native_acceptor.await;
    kafka_acceptor.await;
    if let Some(scrapes) = scrapes {
        scrapes.await;
    }
    if !connections.wait_closed(DRAIN_WAIT_MAX).await {
        tracing::warn!(
            shard = %id,
            open = connections.open(),
            "connections still open after the drain wait"
        );
    }
    Stopper::barrier(&stopper.drained, shards).await;
    shard.close_partitions().await;
    Stopper::barrier(&stopper.closed, shards).await;
    tracing::info!(shard = %id, "{}", shard.read_cache.stats());
    Ok(shard.metrics.snapshot())
}

/// Shard 0's part in the cluster, running until the shard stops.
#[derive(Default)]
struct ClusterRole {
    membership: Option<Rc<Membership>>,
    /// The controller voter, when this broker is one.
    node: Option<Rc<ControllerNode>>,
    /// The controller voter's task, when this broker is a voter.
    voter: Option<glommio::task::JoinHandle<()>>,
}

/// Shard 0's part in the cluster: its controller voter (when the broker is one) and the
/// broker's membership, registering and heartbeating until the broker stops. A voter whose log
/// fails stops the broker: it must not vote on what it cannot keep.
async fn join_cluster(shard: &Rc<Shard>, stopper: &Arc<Stopper>, directory: u128) -> ClusterRole {
    let config = &shard.config;
    let links = links::VoterLinks::start(shard.clone(), config);
    let voters: Vec<NodeId> = match config.in_cluster() {
        true => config.quorum_voters.iter().map(|v| v.node).collect(),
        false => vec![config.node_id],
    };
    let mut role = ClusterRole::default();
    let metadata = Rc::new(AppliedMetadata::default());
    if config.is_voter() {
        let settings = ControllerSettings {
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
            limits: PartitionLimits {
                per_broker: config.max_broker_partitions,
                internal_topic: OFFSETS_TOPIC.to_string(),
                internal_partitions: OFFSETS_PARTITIONS,
                internal_replication_factor: config.offsets_topic_replication_factor,
            },
            topic_defaults: config.topic_defaults.clone(),
            leader_balance: config.auto_leader_rebalance.then(|| LeaderBalance {
                interval: Duration::from_secs(config.leader_imbalance_check_interval_secs),
                imbalance_percentage: config.leader_imbalance_per_broker_percentage,
            }),
            dir_cluster: shard.cluster_id.clone(),
            metadata: metadata.clone(),
            snapshot_bytes: config.metadata_snapshot_bytes,
        };
        let started = match shard.open_voter_log(&voters).await {
            Ok(disk) => {
                ControllerNode::new(config.node_id, voters.clone(), disk, links.clone(), settings)
            }
            Err(e) => Err(format!("opening the controller's log: {e}")),
        };
        let node = match started {
            Ok(node) => node,
            Err(e) => {
                stopper.fail(e);
                return ClusterRole::default();
            }
        };
        shard.host_voter(node.clone());
        role.node = Some(node.clone());
        let (voter, stop, stopper) = (node.clone(), shard.clone(), stopper.clone());
        role.voter = Some(
            glommio::spawn_local(async move {
                if let Err(e) = voter.run(stop.wait_for_stop()).await {
                    stopper.fail(format!("the controller voter failed: {e}"));
                }
            })
            .detach(),
        );
        let stop = shard.clone();
        glommio::spawn_local(async move { node.fence_the_silent(stop.wait_for_stop()).await })
            .detach();
    } else {
        let follower = Rc::new(MetadataFollower::new(
            config.node_id,
            voters.clone(),
            links.clone(),
            metadata.clone(),
        ));
        shard.host_follower(follower.clone());
        let (stop, stopper) = (shard.clone(), stopper.clone());
        glommio::spawn_local(async move {
            if let Err(e) = follower.run(stop.wait_for_stop()).await {
                stopper.fail(format!("following the metadata log: {e}"));
            }
        })
        .detach();
    }
    let (kafka, native) = (config.kafka_endpoint(), config.native_endpoint());
    let joining = Joining {
        voters,
        links,
        heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
        session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
        data_dir: config.data_dir.clone(),
        directory,
        dir_cluster: shard.cluster_id.clone(),
        min_insync_replicas: config.topic_defaults.min_insync_replicas,
        storage_health: shard.storage_health.clone(),
    };
    let endpoints = Endpoints { kafka, native };
    let membership =
        Rc::new(Membership::new(config.node_id, config.rack.clone(), endpoints, joining));
    let (member, stop, failed) = (membership.clone(), shard.clone(), stopper.clone());
    glommio::spawn_local(async move {
        if let Err(e) = member.run(stop.wait_for_stop()).await {
            failed.fail(e);
        }
    })
    .detach();
    let (publisher, incarnation, stopper) =
        (shard.clone(), membership.incarnation(), stopper.clone());
    glommio::spawn_local(async move {
        if let Err(e) = publisher.publish_metadata(metadata, incarnation).await {
            stopper.fail(e);
        }
    })
    .detach();
    shard.host_membership(membership.clone());
    role.membership = Some(membership);
    role
}

/// Delivers what the other shards send this one, calls and answers, in arrival order.
fn serve_mesh(shard: &Rc<Shard>, receivers: Vec<(ShardId, ConnectedReceiver<MeshMessage>)>) {
    for (from, receiver) in receivers {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                shard.deliver(from, message);
            }
        })
        .detach();
    }
}

/// Session expiry and rebalance deadlines of the groups this shard coordinates, and the
/// compaction of their offsets log.
async fn group_timers(shard: Rc<Shard>) {
    let mut last_compaction = std::time::Instant::now();
    loop {
        let stop = async {
            shard.wait_for_stop().await;
            true
        };
        let tick = async {
            glommio::timer::sleep(crate::group::coordinator::TICK).await;
            false
        };
        if futures_lite::future::or(stop, tick).await {
            return;
        }
        shard.groups.tick(std::time::Instant::now());
        if last_compaction.elapsed() >= crate::group::coordinator::COMPACTION_CHECK {
            shard.groups.compact(&shard).await;
            last_compaction = std::time::Instant::now();
        }
    }
}

async fn retention_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(shard.config.retention_check_interval_ms);
    loop {
        let stop = async {
            shard.wait_for_stop().await;
            true
        };
        let tick = async {
            glommio::timer::sleep(interval).await;
            false
        };
        if futures_lite::future::or(stop, tick).await {
            return;
        }
        // Not before the broker has caught up with the metadata: until then its topics may
        // resolve against defaults the cluster has changed since (Kafka's brokers load their
        // logs only after catching up, for this).
        if shard.is_ready() {
            shard.enforce_retention().await;
        }
    }
}

fn report_histograms(merged: Snapshot, dir: Option<&Path>) -> Result<(), String> {
    println!("{}", metrics::render_table(&merged));
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (name, histogram) in &merged {
        let path = dir.join(format!("{name}.hgrm"));
        std::fs::write(&path, metrics::write_hgrm(histogram))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    tracing::info!(dir = %dir.display(), "wrote .hgrm percentile distributions");
    Ok(())
}
