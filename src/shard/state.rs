//! What one shard owns, and how an operation reaches the shard that owns its partition.
//!
//! Every operation on a partition goes through [`Shard::call`]: executed in place when this
//! shard owns the partition, otherwise sent over the channel mesh, whose answer comes back over
//! the mesh to a oneshot waiting on this shard (Seastar's `submit_to`). Payloads travel as `Bytes` or as the owned receive buffer, never
//! copied per hop.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::group::offsets::{self, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::group::{Coordinator, GroupAnswer, GroupCall, OffsetsLogs};
use crate::log::queued::QueuedBytes;
use crate::log::segment::{OpenFiles, PARTITION_DISK_BYTES_AT_FIRST};
use crate::log::storage::DmaStorage;
use crate::log::tail_cache::TailBudget;
use crate::log::{Acks, OFFSET_EARLIEST, OFFSET_LATEST};
use crate::log::{LogLimits, PartitionLog, ReadOutcome, SharedByShard};
use crate::metrics::Metrics;
use crate::record::PendingEntry;
use crate::shard::call::{MeshMessage, ShardAnswer, ShardCall};
use crate::shard::catalog::{self, Catalog, TopicFile, TopicInfo, PARTITIONS_MAX};
use crate::shard::turns::Turns;

/// Appended-but-unwritten bytes per partition beyond which producers wait.
const STAGED_BYTES_MAX: usize = 64 * 1024 * 1024;

type PartitionKey = (String, u32);

/// The broker's own topics: clients may read them but not create or append to them.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

/// How the controller writes a topic's `topic.toml`.
enum TopicFileWrite {
    /// A new topic: its directory is made afresh (clearing the remains of an unfinished create
    /// or delete).
    NewTopic,
    /// An existing topic (more partitions): only the file is replaced; the partition
    /// directories beside it hold acknowledged records.
    Replace,
}

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    pub metrics: Rc<Metrics>,
    catalog: RefCell<Catalog>,
    partitions: RefCell<HashMap<PartitionKey, Rc<PartitionLog>>>,
    peers: Option<Senders<MeshMessage>>,
    /// Calls sent to other shards, by id, waiting for their answers.
    waiting: RefCell<HashMap<u64, oneshot::Sender<ShardAnswer>>>,
    next_call_id: Cell<u64>,
    /// One line per target shard: calls enter the mesh in the order they were made even when a
    /// channel is full (otherwise a newer call could slip into a freed slot before an older
    /// one wakes, and two produce requests of one connection could swap offsets).
    send_turns: Vec<Turns>,
    /// Serialises topic changes on the controller shard.
    admin_lock: glommio::sync::Semaphore,
    stopping: Cell<bool>,
    stop_event: Event,
    /// The next idempotent producer id this shard hands out; see [`Shard::next_producer_id`].
    next_producer_id: Cell<i64>,
    /// The consumer groups this shard coordinates.
    pub groups: Coordinator,
    /// What every shard's partitions have yet to write, against `queued.max.request.bytes`.
    pub queued: Arc<QueuedBytes>,
    /// What this shard's partitions keep in their tail caches, against
    /// `log.tail.cache.shard.bytes`.
    pub tail_budget: Rc<TailBudget>,
    /// This shard's share of `log.segment.files.open.max`.
    pub open_files: Rc<OpenFiles>,
}

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Arc<BrokerConfig>,
        catalog: Catalog,
        peers: Option<Senders<MeshMessage>>,
        queued: Arc<QueuedBytes>,
    ) -> Self {
        Self {
            queued,
            tail_budget: TailBudget::new(config.tail_cache_shard_bytes),
            open_files: OpenFiles::new(config.segment_files_open_max.div_ceil(count).max(1)),
            groups: Coordinator::new(&config),
            id,
            count,
            config,
            metrics: Rc::new(Metrics::default()),
            catalog: RefCell::new(catalog),
            partitions: RefCell::new(HashMap::new()),
            peers,
            waiting: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            send_turns: (0..count).map(|_| Turns::default()).collect(),
            admin_lock: glommio::sync::Semaphore::new(1),
            stopping: Cell::new(false),
            stop_event: Event::new(),
            next_producer_id: Cell::new(crate::now_ms().saturating_mul(1000) + id as i64),
        }
    }

    /// A producer id no other shard, and no earlier run, has handed out. Shard `s` of `n` hands
    /// out `start + s`, `start + s + n`, ... where `start` is the start time in microseconds-ish
    /// (ms × 1000): a later run starts above every id an earlier one could have reached unless
    /// it handed out more than 1000 ids per millisecond of its life.
    pub fn next_producer_id(&self) -> i64 {
        let id = self.next_producer_id.get();
        self.next_producer_id.set(id + self.count as i64);
        id
    }

    fn limits(&self) -> LogLimits {
        LogLimits {
            write_bytes_max: self.config.flush_write_bytes_max,
            tail_cache_bytes: self.config.tail_cache_bytes,
            staged_bytes_max: STAGED_BYTES_MAX,
            producer_expiration_ms: i64::try_from(self.config.producer_id_expiration_ms)
                .unwrap_or(i64::MAX),
            recovery_point_bytes: crate::log::partition::RECOVERY_POINT_BYTES,
        }
    }

    /// Opens every partition this shard owns among the catalog's topics.
    pub async fn open_owned_partitions(&self) -> std::io::Result<()> {
        let topics: Vec<(String, TopicInfo)> =
            self.catalog.borrow().topics.iter().map(|(n, i)| (n.clone(), i.clone())).collect();
        for (name, info) in topics {
            self.open_partitions(&name, &info).await?;
        }
        Ok(())
    }

    async fn open_partitions(&self, name: &str, info: &TopicInfo) -> std::io::Result<()> {
        let topic: Rc<str> = Rc::from(name);
        for partition in (0..info.partitions).filter(|p| self.owner(name, *p) == self.id) {
            // Adding partitions re-applies a topic: the ones already open stay as they are.
            if self.partitions.borrow().contains_key(&(name.to_string(), partition)) {
                continue;
            }
            let dir = catalog::partition_dir(&self.config.data_dir, name, partition);
            let log = PartitionLog::open(
                topic.clone(),
                partition,
                dir,
                info.config.clone(),
                self.limits(),
                SharedByShard {
                    storage: DmaStorage,
                    metrics: self.metrics.clone(),
                    queued: self.queued.clone(),
                    tail_budget: self.tail_budget.clone(),
                    open_files: self.open_files.clone(),
                },
            )
            .await?;
            self.partitions.borrow_mut().insert((name.to_string(), partition), log);
        }
        Ok(())
    }

    pub fn owner(&self, topic: &str, partition: u32) -> usize {
        catalog::owner_shard(topic, partition, self.count)
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.catalog.borrow().topics.get(name).cloned()
    }

    /// Whether `topic` exists with a partition `partition`.
    pub fn has_partition(&self, topic: &str, partition: u32) -> bool {
        self.catalog.borrow().topics.get(topic).is_some_and(|t| partition < t.partitions)
    }

    pub fn topics(&self) -> Vec<(String, TopicInfo)> {
        self.catalog.borrow().topics.iter().map(|(n, i)| (n.clone(), i.clone())).collect()
    }

    /// A partition this shard owns.
    pub fn partition_log(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Rc<PartitionLog>, BrokerError> {
        if let Some(log) = self.partitions.borrow().get(&(topic.to_string(), partition)) {
            return Ok(log.clone());
        }
        match self.catalog.borrow().topics.get(topic) {
            None => Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {topic}"))),
            Some(info) => Err(BrokerError::new(
                ErrorKind::UnknownPartition,
                format!(
                    "topic {topic} has {} partitions, no partition {partition}",
                    info.partitions
                ),
            )),
        }
    }

    /// Runs `call` on the shard `target`: here, or across the mesh.
    pub async fn call(self: &Rc<Self>, target: usize, call: ShardCall) -> ShardAnswer {
        if target == self.id {
            return self.execute(call).await;
        }
        let unavailable = |why: &str| BrokerError::new(ErrorKind::NotAvailable, why.to_string());
        let Some(peers) = &self.peers else {
            return ShardAnswer::Done(Err(unavailable("no such shard")));
        };
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let (reply, answer) = oneshot::channel();
        self.waiting.borrow_mut().insert(call_id, reply);
        let sent = {
            let turn = self.send_turns[target].take();
            turn.wait().await;
            peers.send_to(target, MeshMessage::Call { call_id, call }).await
        };
        if sent.is_err() {
            self.waiting.borrow_mut().remove(&call_id);
            return ShardAnswer::Done(Err(unavailable("shard is stopping")));
        }
        answer
            .await
            .unwrap_or_else(|_| ShardAnswer::Done(Err(unavailable("shard dropped the call"))))
    }

    /// Handles a message from shard `from`: runs a call (in its own task, so a slow one does
    /// not hold up the rest) and sends the answer back, or hands an answer to its waiting call.
    pub fn deliver(self: &Rc<Self>, from: usize, message: MeshMessage) {
        match message {
            MeshMessage::Call { call_id, call } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let answer = shard.execute(call).await;
                    if let Some(peers) = &shard.peers {
                        // Fails only when the caller's shard is gone; nobody waits then.
                        let _ = peers.send_to(from, MeshMessage::Answer { call_id, answer }).await;
                    }
                })
                .detach();
            }
            MeshMessage::Answer { call_id, answer } => {
                // The caller may have gone away (its connection closed); nothing to do then.
                if let Some(waiter) = self.waiting.borrow_mut().remove(&call_id) {
                    let _ = waiter.send(answer);
                }
            }
        }
    }

    /// Executes a call addressed to this shard.
    pub async fn execute(self: &Rc<Self>, call: ShardCall) -> ShardAnswer {
        match call {
            ShardCall::Produce { topic, partition, acks, entry } => {
                ShardAnswer::Produced(self.produce_local(&topic, partition, acks, entry).await)
            }
            ShardCall::Fetch { topic, partition, offset, max_bytes, max_wait } => {
                ShardAnswer::Fetched(
                    self.fetch_local(&topic, partition, offset, max_bytes, max_wait).await,
                )
            }
            ShardCall::ListOffsets { topic, partition, timestamp } => {
                ShardAnswer::Offset(self.list_offset_local(&topic, partition, timestamp).await)
            }
            ShardCall::Watermarks { topic, partition } => ShardAnswer::Watermarks(
                self.partition_log(&topic, partition).map(|l| (l.log_start(), l.high_watermark())),
            ),
            ShardCall::CreateTopic { name, partitions, overrides } => ShardAnswer::Done(
                self.create_topic_as_controller(name, partitions, overrides).await,
            ),
            ShardCall::DeleteTopic { name } => {
                ShardAnswer::Done(self.delete_topic_as_controller(name).await)
            }
            ShardCall::AddPartitions { name, count } => {
                ShardAnswer::Done(self.add_partitions_as_controller(name, count).await)
            }
            ShardCall::Group(call) => {
                ShardAnswer::Group(Box::new(self.groups.handle(self, call).await))
            }
            ShardCall::ApplyTopic { name, info } => {
                ShardAnswer::Done(self.apply_topic(name, info).await)
            }
        }
    }

    async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        entry: PendingEntry,
    ) -> Result<(u64, u64), BrokerError> {
        let log = self.partition_log(topic, partition)?;
        // Nothing awaits before the append, so requests keep their arrival order.
        let appended = log.append(entry)?;
        match acks {
            Acks::None => log.wait_for_room().await?,
            Acks::Leader => log.wait_written(&appended).await?,
            Acks::All => log.wait_synced(&appended).await?,
        }
        Ok((appended.base_offset, log.log_start()))
    }

    async fn fetch_local(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadOutcome, BrokerError> {
        let log = self.partition_log(topic, partition)?;
        let outcome = log.read(offset, max_bytes).await?;
        if !outcome.entries.is_empty() || max_wait.is_zero() || self.stopping.get() {
            return Ok(outcome);
        }
        let stop = async {
            self.wait_for_stop().await;
            false
        };
        if futures_lite::future::or(log.wait_for_data(offset, max_wait), stop).await {
            let woken_at = Instant::now();
            let outcome = log.read(offset, max_bytes).await?;
            return Ok(ReadOutcome { woken_at: Some(woken_at), ..outcome });
        }
        Ok(outcome)
    }

    async fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<(i64, i64), BrokerError> {
        let log = self.partition_log(topic, partition)?;
        let found = match timestamp {
            OFFSET_LATEST => Some((log.high_watermark(), -1)),
            OFFSET_EARLIEST => Some((log.log_start(), -1)),
            t if t >= 0 => log.offset_for_timestamp(t).await?,
            other => {
                let why = format!("timestamp {other} is neither -1, -2 nor a time");
                return Err(BrokerError::new(ErrorKind::InvalidRequest, why));
            }
        };
        Ok(found.map_or((-1, -1), |(offset, time)| (offset as i64, time)))
    }

    async fn create_topic_as_controller(
        self: &Rc<Self>,
        name: String,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        catalog::validate_topic_name(&name)
            .map_err(|e| BrokerError::new(ErrorKind::InvalidTopicName, e))?;
        if partitions == 0 || partitions > PARTITIONS_MAX {
            let why = format!("partitions must be between 1 and {PARTITIONS_MAX}");
            return Err(BrokerError::new(ErrorKind::InvalidPartitions, why));
        }
        let file = TopicFile { partitions, config: overrides };
        let info = TopicInfo::resolve(file.clone(), &self.config.topic_defaults)
            .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, e))?;
        if info.config.max_message_bytes >= self.config.socket_request_max_bytes {
            let why = format!(
                "max.message.bytes {} must be below the broker's socket.request.max.bytes {}",
                info.config.max_message_bytes, self.config.socket_request_max_bytes
            );
            return Err(BrokerError::new(ErrorKind::InvalidConfig, why));
        }
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        if self.topic(&name).is_some() {
            return Err(BrokerError::new(
                ErrorKind::TopicAlreadyExists,
                format!("topic {name} exists"),
            ));
        }
        self.check_room_for(&name, partitions).await?;
        self.write_topic_file(&name, file, TopicFileWrite::NewTopic).await?;
        self.broadcast(&name, Some(info)).await?;
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(())
    }

    /// Writes a topic's `topic.toml` off the shard's thread: a new topic's in a fresh directory,
    /// an existing topic's by replacing only that file.
    async fn write_topic_file(
        &self,
        name: &str,
        file: TopicFile,
        write: TopicFileWrite,
    ) -> Result<(), BrokerError> {
        let data_dir = self.config.data_dir.clone();
        let file_name = name.to_string();
        glommio::executor()
            .spawn_blocking(move || match write {
                TopicFileWrite::NewTopic => catalog::create_topic(&data_dir, &file_name, &file),
                TopicFileWrite::Replace => {
                    catalog::replace_topic_file(&data_dir, &file_name, &file)
                }
            })
            .await
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ErrorKind::TopicAlreadyExists
                } else {
                    ErrorKind::StorageError
                };
                BrokerError::new(code, format!("writing topic {name}: {e}"))
            })
    }

    async fn add_partitions_as_controller(
        self: &Rc<Self>,
        name: String,
        count: u32,
    ) -> Result<(), BrokerError> {
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        let Some(mut info) = self.topic(&name) else {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        };
        if count <= info.partitions || count > PARTITIONS_MAX {
            let why = format!(
                "topic {name} has {} partitions; a new count must be above that and at most \
                 {PARTITIONS_MAX}, not {count}",
                info.partitions
            );
            return Err(BrokerError::new(ErrorKind::InvalidPartitions, why));
        }
        self.check_room_for(&name, count - info.partitions).await?;
        let file = TopicFile { partitions: count, config: info.overrides.clone() };
        self.write_topic_file(&name, file, TopicFileWrite::Replace).await?;
        let old = info.partitions;
        info.partitions = count;
        self.broadcast(&name, Some(info)).await?;
        tracing::info!(topic = %name, from = old, to = count, "added partitions");
        Ok(())
    }

    /// Refuses `new` partitions the broker cannot hold: past `max.broker.partitions` (every
    /// topic's partitions counted), or past what the disk has room for at first. Creating them
    /// must fail with a clear answer rather than fill the disk or the file table, which would
    /// stop every other client too. Runs under the admin lock, so two creates cannot both pass.
    ///
    /// The internal `__consumer_offsets` is exempt, and its partitions are kept free for it
    /// until it exists: a broker full of user topics must still take a group's first commit.
    async fn check_room_for(&self, topic: &str, new: u32) -> Result<(), BrokerError> {
        if is_internal_topic(topic) {
            return Ok(());
        }
        let (held, offsets_created) = {
            let catalog = self.catalog.borrow();
            let held: u64 = catalog.topics.values().map(|t| u64::from(t.partitions)).sum();
            (held, catalog.topics.contains_key(OFFSETS_TOPIC))
        };
        let reserved = if offsets_created { 0 } else { u64::from(OFFSETS_PARTITIONS) };
        let limit = self.config.max_broker_partitions;
        if held + reserved + u64::from(new) > u64::from(limit) {
            let why = format!(
                "the broker holds {held} partitions (and keeps {reserved} for {OFFSETS_TOPIC}); \
                 {new} more would pass max.broker.partitions={limit}"
            );
            return Err(BrokerError::new(ErrorKind::PolicyViolation, why));
        }
        let needed = u64::from(new) * PARTITION_DISK_BYTES_AT_FIRST;
        let data_dir = self.config.data_dir.clone();
        let free = glommio::executor()
            .spawn_blocking(move || catalog::free_disk_bytes(&data_dir))
            .await
            .map_err(|e| BrokerError::new(ErrorKind::StorageError, format!("free disk: {e}")))?;
        if needed > free {
            let why = format!(
                "{new} new partitions need {needed} bytes of disk at first; the data directory \
                 has {free} free"
            );
            return Err(BrokerError::new(ErrorKind::PolicyViolation, why));
        }
        Ok(())
    }

    async fn delete_topic_as_controller(self: &Rc<Self>, name: String) -> Result<(), BrokerError> {
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        if self.topic(&name).is_none() {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        }
        self.broadcast(&name, None).await?;
        let data_dir = self.config.data_dir.clone();
        let dir_name = name.clone();
        glommio::executor()
            .spawn_blocking(move || catalog::remove_topic(&data_dir, &dir_name))
            .await
            .map_err(|e| {
                BrokerError::new(ErrorKind::StorageError, format!("removing topic {name}: {e}"))
            })?;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Tells every shard about a topic change and waits until each has applied it.
    async fn broadcast(
        self: &Rc<Self>,
        name: &str,
        info: Option<TopicInfo>,
    ) -> Result<(), BrokerError> {
        for shard in 0..self.count {
            let call = ShardCall::ApplyTopic { name: name.to_string(), info: info.clone() };
            // Boxed: `call` -> `execute` -> controller -> `broadcast` -> `call` is a cycle.
            let answer: std::pin::Pin<Box<dyn std::future::Future<Output = ShardAnswer> + '_>> =
                Box::pin(self.call(shard, call));
            match answer.await {
                ShardAnswer::Done(result) => result?,
                _ => return Err(BrokerError::new(ErrorKind::NotAvailable, "unexpected answer")),
            }
        }
        Ok(())
    }

    async fn apply_topic(&self, name: String, info: Option<TopicInfo>) -> Result<(), BrokerError> {
        match info {
            Some(info) => {
                self.open_partitions(&name, &info).await.map_err(|e| {
                    BrokerError::new(ErrorKind::StorageError, format!("opening topic {name}: {e}"))
                })?;
                // Published last, so nobody sees the topic before its partitions are open.
                self.catalog.borrow_mut().topics.insert(name, info);
            }
            None => {
                self.catalog.borrow_mut().topics.remove(&name);
                let logs: Vec<Rc<PartitionLog>> = {
                    let mut partitions = self.partitions.borrow_mut();
                    let keys: Vec<PartitionKey> =
                        partitions.keys().filter(|(t, _)| *t == name).cloned().collect();
                    keys.iter().filter_map(|k| partitions.remove(k)).collect()
                };
                for log in logs {
                    log.close().await;
                    log.mark_deleted();
                }
            }
        }
        Ok(())
    }

    /// Applies retention to every partition of this shard, once.
    pub async fn enforce_retention(&self) {
        let logs: Vec<Rc<PartitionLog>> = self.partitions.borrow().values().cloned().collect();
        let now = crate::now_ms();
        for log in logs {
            if let Err(e) = log.enforce_retention(now).await {
                tracing::error!(topic = %log.topic, partition = log.partition, "retention failed: {e}");
            }
        }
    }

    /// Flushes, syncs and closes every partition of this shard.
    pub async fn close_partitions(&self) {
        let logs: Vec<Rc<PartitionLog>> =
            self.partitions.borrow_mut().drain().map(|(_, l)| l).collect();
        for log in logs {
            log.close().await;
        }
    }

    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop_event.notify(usize::MAX);
    }

    /// Resolves once the shard starts stopping.
    pub async fn wait_for_stop(&self) {
        loop {
            let listener = self.stop_event.listen();
            if self.stopping.get() {
                return;
            }
            listener.await;
        }
    }
}

/// Typed front ends of [`Shard::call`] for the protocol handlers.
impl Shard {
    /// Runs `call` on `target` and takes the answer `pick` expects; any other answer is an error.
    async fn ask<T>(
        self: &Rc<Self>,
        target: usize,
        call: ShardCall,
        pick: impl FnOnce(ShardAnswer) -> Result<Result<T, BrokerError>, ShardAnswer>,
    ) -> Result<T, BrokerError> {
        pick(self.call(target, call).await).unwrap_or_else(|other| Err(unexpected(other)))
    }

    pub async fn produce(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        acks: Acks,
        entry: PendingEntry,
    ) -> Result<(u64, u64), BrokerError> {
        if is_internal_topic(topic) {
            // As Kafka: only the broker appends to its internal topics. A client's records there
            // would be replayed as commits (or stop the replay) at the next start.
            let why = format!("cannot append to internal topic {topic}");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        let call = ShardCall::Produce { topic: topic.to_string(), partition, acks, entry };
        self.ask(self.owner(topic, partition), call, |answer| match answer {
            ShardAnswer::Produced(result) => Ok(result),
            other => Err(other),
        })
        .await
    }

    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadOutcome, BrokerError> {
        let call =
            ShardCall::Fetch { topic: topic.to_string(), partition, offset, max_bytes, max_wait };
        self.ask(self.owner(topic, partition), call, |answer| match answer {
            ShardAnswer::Fetched(result) => Ok(result),
            other => Err(other),
        })
        .await
    }

    /// The offset (and, for a time lookup, the timestamp) of the latest (-1), earliest (-2) or
    /// first record at or after a time; (-1, -1) when no record is that new.
    pub async fn list_offset(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<(i64, i64), BrokerError> {
        let call = ShardCall::ListOffsets { topic: topic.to_string(), partition, timestamp };
        self.ask(self.owner(topic, partition), call, |answer| match answer {
            ShardAnswer::Offset(result) => Ok(result),
            other => Err(other),
        })
        .await
    }

    pub async fn watermarks(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
    ) -> Result<(u64, u64), BrokerError> {
        let call = ShardCall::Watermarks { topic: topic.to_string(), partition };
        self.ask(self.owner(topic, partition), call, |answer| match answer {
            ShardAnswer::Watermarks(result) => Ok(result),
            other => Err(other),
        })
        .await
    }

    /// Creates a topic through the controller shard.
    /// Creates a topic for a client: any but the broker's internal ones, which it creates itself
    /// with their own settings.
    pub async fn create_topic(
        self: &Rc<Self>,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        if is_internal_topic(name) {
            let why = format!("{name} is internal: the broker creates it on first use");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        self.create_any_topic(name, partitions, overrides).await
    }

    async fn create_any_topic(
        self: &Rc<Self>,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let call = ShardCall::CreateTopic { name: name.to_string(), partitions, overrides };
        self.ask(0, call, done).await
    }

    /// The topic's settings, creating it with `num.partitions` when it is missing and
    /// `auto.create.topics.enable` is on (Kafka creates on produce, and on metadata that allows
    /// it). An internal topic is created with its own settings whatever the switch says.
    pub async fn topic_or_create(self: &Rc<Self>, name: &str) -> Result<TopicInfo, BrokerError> {
        if let Some(info) = self.topic(name) {
            return Ok(info);
        }
        if is_internal_topic(name) {
            self.ensure_offsets_topic().await?;
        } else if !self.config.auto_create_topics {
            let why = format!("no topic {name} (auto.create.topics.enable is off)");
            return Err(BrokerError::new(ErrorKind::UnknownTopic, why));
        } else {
            match self.create_topic(name, self.config.num_partitions, BTreeMap::new()).await {
                Err(e) if e.kind != ErrorKind::TopicAlreadyExists => return Err(e),
                _ => {}
            }
        }
        self.topic(name).ok_or_else(|| {
            BrokerError::new(ErrorKind::UnknownTopic, format!("topic {name} vanished"))
        })
    }

    /// The shard coordinating `group`: the owner of its `__consumer_offsets` partition.
    pub fn group_shard(&self, group: &str) -> usize {
        self.owner(OFFSETS_TOPIC, offsets::partition_for(group))
    }

    /// Runs a group operation on the group's coordinator shard.
    pub async fn group(self: &Rc<Self>, group: &str, call: GroupCall) -> GroupAnswer {
        self.group_on(self.group_shard(group), call).await
    }

    /// Runs a group operation on shard `target` (listing groups asks every shard).
    pub async fn group_on(self: &Rc<Self>, target: usize, call: GroupCall) -> GroupAnswer {
        // Boxed: `call` -> `execute` -> coordinator -> `persist` -> topic creation -> `call`.
        let answer: std::pin::Pin<Box<dyn std::future::Future<Output = ShardAnswer> + '_>> =
            Box::pin(self.call(target, ShardCall::Group(call)));
        match answer.await {
            ShardAnswer::Group(answer) => *answer,
            // The target shard is stopping (or answered nonsense): retriable for clients.
            _ => GroupAnswer::Committed(Err(ErrorKind::CoordinatorNotAvailable)),
        }
    }

    /// Creates `__consumer_offsets` on first use.
    pub async fn ensure_offsets_topic(self: &Rc<Self>) -> Result<(), BrokerError> {
        if self.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        // Never deleted by age or size: the coordinator compacts it (see `Coordinator::compact`).
        let overrides = BTreeMap::from([
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
            ("segment.bytes".to_string(), self.config.offsets_topic_segment_bytes.to_string()),
        ]);
        // Boxed: `execute` -> coordinator commit -> here -> `create_topic` -> `call` -> `execute`.
        let creating: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
            Box::pin(self.create_any_topic(OFFSETS_TOPIC, OFFSETS_PARTITIONS, overrides));
        match creating.await {
            Err(e) if e.kind != ErrorKind::TopicAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Raises a topic's partition count through the controller shard.
    pub async fn add_partitions(
        self: &Rc<Self>,
        name: &str,
        count: u32,
    ) -> Result<(), BrokerError> {
        self.ask(0, ShardCall::AddPartitions { name: name.to_string(), count }, done).await
    }

    pub async fn delete_topic(self: &Rc<Self>, name: &str) -> Result<(), BrokerError> {
        self.ask(0, ShardCall::DeleteTopic { name: name.to_string() }, done).await
    }
}

fn done(answer: ShardAnswer) -> Result<Result<(), BrokerError>, ShardAnswer> {
    match answer {
        ShardAnswer::Done(result) => Ok(result),
        other => Err(other),
    }
}

fn unexpected(answer: ShardAnswer) -> BrokerError {
    match answer {
        ShardAnswer::Done(Err(e)) => e,
        _ => BrokerError::new(ErrorKind::NotAvailable, "a shard answered a different call"),
    }
}

/// The coordinator's view of this shard: the `__consumer_offsets` partitions it owns.
impl OffsetsLogs for Rc<Shard> {
    fn owned(&self) -> Vec<(u32, Rc<PartitionLog>)> {
        if self.topic(OFFSETS_TOPIC).is_none() {
            return Vec::new();
        }
        (0..OFFSETS_PARTITIONS)
            .filter(|&partition| self.owner(OFFSETS_TOPIC, partition) == self.id)
            .filter_map(|partition| {
                Some((partition, self.partition_log(OFFSETS_TOPIC, partition).ok()?))
            })
            .collect()
    }

    async fn open(&self, partition: u32) -> Result<Rc<PartitionLog>, BrokerError> {
        self.ensure_offsets_topic().await?;
        self.partition_log(OFFSETS_TOPIC, partition)
    }
}
