//! Followers fetching from their leaders (Kafka's `ReplicaFetcherThread`): on each shard, one
//! fetcher per leader broker, each carrying every partition the shard follows from that leader
//! in one `ReplicaFetch` request at a time.
//!
//! A round: the fetch names each partition's log end, what of it is synced, the epoch of its
//! last entry and the leader epoch it follows in. The answers' entries are received into the
//! write buffers their logs hand out (`replica_stream.rs`, `log::in_place`) and appended as
//! stored (each one's checksum checked by the log), and a diverging epoch truncates the log where
//! Kafka's protocol says (KIP-320, `replication::divergence`). A follower counts toward the
//! high watermark only what survives a power loss (DESIGN, "Cluster"): each fetch reports what
//! is synced as it is sent.
//!
//! A round whose answers show the leader's log end past what they brought does not wait for its
//! entries to be synced: the next fetch goes out while they sync, and the fetch after it waits
//! for them, so at most one round is unsynced when a fetch is sent. That fetch may wait at the
//! leader, but only for entries the leader has appended and is writing (it wakes once the
//! leader has written past the follower, `shard::replicas`), so the report of the sync waits
//! at most for that write, not for new produces, which may themselves wait for this report.
//! A round that brought all there was waits for its sync before the next fetch, which
//! reports it: a fetch parked then would hold the report back until a produce came, or for
//! `replica.fetch.wait.max.ms`. Under load a follower no longer waits out a write and an
//! fdatasync each round (PERFORMANCE.md, "Receiving bodies unzeroed, and fetching while
//! syncing").

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use event_listener::Event;

use crate::broker::replica_stream::{ReplicaStream, Section};
use crate::client::ClientError;
use crate::log::{Appended, LogError};
use crate::native::messages::{
    ErrorCode, ReplicaFetchAnswer, ReplicaFetchPartition, ReplicaFetchRequest,
};
use crate::partition::Partition;
use crate::record::entry::{entries, Check, StoredEntry};
use crate::replication::divergence::{self, EpochEnd};
use crate::shard::replicas::Followed;
use crate::shard::state::PartitionKey;
use crate::shard::Shard;
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};

/// How long connecting to a leader may take.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// A fetch answered later than its wait plus this counts as a lost connection.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// After a failed connection or request, before the next.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// A partition the leader refused (not its leader yet, another epoch) rests this long, while
/// the metadata catches up.
const REFUSED_REST: Duration = Duration::from_millis(100);
/// A partition whose log failed to take the leader's entries rests this long.
const FAILED_REST: Duration = Duration::from_secs(1);

/// Every shard, until the broker stops: keeps one fetcher per leader broker it follows
/// partitions from, in step with each publication.
pub async fn run_replica_fetchers(shard: Rc<Shard>) {
    let mut fetchers: BTreeMap<NodeId, Rc<LeaderFetcher>> = BTreeMap::new();
    loop {
        let published = shard.listen_published();
        let mut followed = shard.followed();
        fetchers.retain(|leader, fetcher| {
            let kept = followed.contains_key(leader);
            if !kept {
                fetcher.stop();
            }
            kept
        });
        for (leader, partitions) in std::mem::take(&mut followed) {
            match fetchers.get(&leader) {
                Some(fetcher) => fetcher.follow(partitions),
                None => {
                    let fetcher = Rc::new(LeaderFetcher::new(leader, partitions));
                    glommio::spawn_local(fetch_from(shard.clone(), fetcher.clone())).detach();
                    fetchers.insert(leader, fetcher);
                }
            }
        }
        let stop = async {
            shard.wait_for_stop().await;
            true
        };
        let changed = async {
            published.await;
            false
        };
        if futures_lite::future::or(stop, changed).await {
            fetchers.values().for_each(|f| f.stop());
            return;
        }
    }
}

/// The partitions one shard follows from one leader broker.
struct LeaderFetcher {
    leader: NodeId,
    /// Shared with each round in flight, which checks its answers against what is followed
    /// when they come (replaced whole, never changed in place).
    partitions: RefCell<Rc<BTreeMap<PartitionKey, Followed>>>,
    /// Fired when the partitions change or the fetcher stops.
    changed: Event,
    stopped: Cell<bool>,
}

impl LeaderFetcher {
    fn new(leader: NodeId, partitions: BTreeMap<PartitionKey, Followed>) -> Self {
        let (partitions, changed) = (RefCell::new(Rc::new(partitions)), Event::new());
        Self { leader, partitions, changed, stopped: Cell::new(false) }
    }

    fn follow(&self, partitions: BTreeMap<PartitionKey, Followed>) {
        if **self.partitions.borrow() != partitions {
            *self.partitions.borrow_mut() = Rc::new(partitions);
            self.changed.notify(usize::MAX);
        }
    }

    fn stop(&self) {
        self.stopped.set(true);
        self.changed.notify(usize::MAX);
    }

    /// Waits for `wait`, or until the partitions change or the fetcher stops.
    async fn rest(&self, wait: Duration) {
        let changed = self.changed.listen();
        if !self.stopped.get() {
            futures_lite::future::or(changed, glommio::timer::sleep(wait)).await;
        }
    }
}

/// What a fetcher remembers of one partition between rounds.
#[derive(Default)]
struct Progress {
    known_high_watermark: Offset,
    /// Refused or failed: not fetched again before this.
    resting_until: Option<Instant>,
}

/// One fetcher's loop: a `ReplicaFetch` of every partition it follows, the answers applied,
/// then the next, until it stops.
async fn fetch_from(shard: Rc<Shard>, fetcher: Rc<LeaderFetcher>) {
    let leader = fetcher.leader;
    let mut connection: Option<(String, ReplicaStream)> = None;
    let mut progress: BTreeMap<PartitionKey, Progress> = BTreeMap::new();
    // What the last round appended and did not wait for: synced before the next fetch.
    let mut unsynced: Vec<(Rc<Partition>, Appended)> = Vec::new();
    while !fetcher.stopped.get() {
        let followed = Rc::clone(&fetcher.partitions.borrow());
        progress.retain(|key, _| followed.contains_key(key));
        let now = Instant::now();
        let mut asked: BTreeMap<&PartitionKey, Rc<Partition>> = BTreeMap::new();
        let mut partitions = Vec::new();
        for (key, follows) in followed.iter() {
            if !progress.contains_key(key) {
                progress.insert(key.clone(), Progress::default());
            }
            let Some(known) = progress.get(key) else { continue };
            if known.resting_until.is_some_and(|until| until > now) {
                continue;
            }
            let Ok(partition) = shard.partition(&key.0, key.1) else { continue };
            let log = partition.log();
            partitions.push(ReplicaFetchPartition {
                topic: key.0.clone(),
                partition: key.1 .0,
                leader_epoch: follows.epoch.0,
                fetch_offset: log.log_end().0,
                synced: log.synced_offset().0,
                last_fetched_epoch: log.latest_epoch().map_or(-1, |e| e.0),
                known_high_watermark: known.known_high_watermark.0,
                log_start: log.log_start().0,
            });
            asked.insert(key, partition);
        }
        if partitions.is_empty() {
            fetcher.rest(REFUSED_REST).await;
            continue;
        }
        let Some(address) = leader_address(&shard, leader) else {
            fetcher.rest(RETRY_AFTER).await;
            continue;
        };
        if connection.as_ref().is_none_or(|(to, _)| *to != address) {
            connection = match ReplicaStream::connect(&address, CONNECT_WAIT).await {
                Ok(stream) => Some((address, stream)),
                Err(e) => {
                    tracing::debug!(%leader, "connecting to the leader at {address}: {e}");
                    fetcher.rest(RETRY_AFTER).await;
                    continue;
                }
            };
        }
        let Some((_, stream)) = connection.as_mut() else { continue };
        let config = &shard.config;
        let max_wait = Duration::from_millis(config.replica_fetch_wait_max_ms);
        let request = ReplicaFetchRequest {
            follower: config.node_id.0,
            max_wait_ms: u32::try_from(config.replica_fetch_wait_max_ms).unwrap_or(u32::MAX),
            max_bytes: config.replica_fetch_response_max_bytes,
            partition_max_bytes: config.replica_fetch_max_bytes,
            partitions,
        };
        // Each partition's entries are received into a write buffer placed where its log will
        // write them (`log::in_place`), if they are to be appended: its answer has no error
        // and no divergence.
        let place = |answer: &ReplicaFetchAnswer| {
            let key = (answer.topic.clone(), PartitionId(answer.partition));
            let appends = answer.error.code == ErrorCode::None && answer.diverging_epoch < 0;
            let partition = asked.get(&key).filter(|_| appends)?;
            partition.log().receive_buffer(usize::try_from(answer.bytes).ok()?)
        };
        let answered = async { Some(stream.fetch(&request, place).await) };
        let late = async {
            glommio::timer::sleep(max_wait + ANSWER_GRACE).await;
            None
        };
        let (response, sections) = match futures_lite::future::or(answered, late).await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => {
                tracing::debug!(%leader, "a fetch from the leader failed: {e}");
                // A refusal leaves the stream in step (its frame was read whole); anything
                // else may not.
                if !matches!(e, ClientError::Broker { .. }) {
                    connection = None;
                }
                fetcher.rest(RETRY_AFTER).await;
                continue;
            }
            None => {
                tracing::warn!(%leader, "the leader did not answer a fetch in time; connecting again");
                connection = None;
                fetcher.rest(RETRY_AFTER).await;
                continue;
            }
        };
        let mut to_sync = Vec::new();
        // Whether the leader holds entries past what this round brought.
        let mut behind = false;
        for (answer, entries) in response.partitions.into_iter().zip(sections) {
            let key = (answer.topic.clone(), PartitionId(answer.partition));
            let (Some(partition), Some(known)) = (asked.get(&key), progress.get_mut(&key)) else {
                continue;
            };
            // Asked as a follower of this leader in this epoch, and still one: a publication
            // while the fetch was out may have made this replica leader, or moved it on.
            let now_followed = fetcher.partitions.borrow().get(&key).copied();
            if now_followed.is_none() || now_followed != followed.get(&key).copied() {
                continue;
            }
            match apply(partition, &answer, entries, leader).await {
                Applied::Appended(last) => {
                    known.known_high_watermark = Offset(answer.high_watermark);
                    behind |= answer.log_end > last.next_offset.0;
                    to_sync.push((partition.clone(), last));
                }
                Applied::Nothing => known.known_high_watermark = Offset(answer.high_watermark),
                Applied::Rest(wait) => known.resting_until = Some(Instant::now() + wait),
            }
        }
        // The last round's entries are synced before the next fetch, which reports them. This
        // round's sync while it is out if the leader holds more; else first too, as there is
        // nothing to fetch meanwhile.
        wait_synced(std::mem::take(&mut unsynced), leader).await;
        match behind {
            true => unsynced = to_sync,
            false => wait_synced(to_sync, leader).await,
        }
    }
}

/// Waits until each partition's last appended entry is synced (or cut from its log).
async fn wait_synced(appended: Vec<(Rc<Partition>, Appended)>, leader: NodeId) {
    for (partition, last) in appended {
        let log = partition.log();
        match log.wait_synced(&last).await {
            Ok(()) => {}
            // Truncated by a later round's divergence, or its start over.
            Err(e) if log.kept(&last).is_err() => {
                tracing::debug!(topic = %log.topic, partition = %log.partition, %leader, "entries from the leader were cut before they synced: {e}")
            }
            Err(e) => {
                tracing::warn!(topic = %log.topic, partition = %log.partition, %leader, "syncing entries from the leader: {e}")
            }
        }
        partition.high_watermark();
    }
}

/// What applying one partition's answer came to.
enum Applied {
    /// Entries appended, the last one given: a later fetch reports them synced.
    Appended(Appended),
    Nothing,
    /// Not fetched again for a while.
    Rest(Duration),
}

/// Applies one partition's answer to its log: its entries appended, a divergence truncated, an
/// error waited out.
async fn apply(
    partition: &Rc<Partition>,
    answer: &ReplicaFetchAnswer,
    data: Section,
    leader: NodeId,
) -> Applied {
    let log = partition.log();
    let (topic, number) = (&log.topic, log.partition);
    match answer.error.code {
        ErrorCode::None => {}
        ErrorCode::OffsetOutOfRange => return out_of_range(partition, answer, leader).await,
        ErrorCode::NotLeaderOrFollower
        | ErrorCode::FencedLeaderEpoch
        | ErrorCode::UnknownLeaderEpoch
        | ErrorCode::NotAvailable => return Applied::Rest(REFUSED_REST),
        code => {
            tracing::warn!(%topic, partition = %number, %leader, "the leader refused a fetch: {code}: {}", answer.error.message);
            return Applied::Rest(FAILED_REST);
        }
    }
    if answer.diverging_epoch >= 0 {
        let diverging = EpochEnd {
            epoch: LeaderEpoch(answer.diverging_epoch),
            end_offset: Offset(answer.diverging_end_offset),
        };
        let truncation =
            log.with_epochs(|epochs, _, end| divergence::truncation(epochs, end, diverging));
        let before = log.log_end();
        return match truncate_or_start_over(partition, truncation.offset).await {
            Ok(end) => {
                tracing::info!(%topic, partition = %number, %leader, ?diverging, "the log diverged from the leader's: truncated from {before} to {end}");
                Applied::Nothing
            }
            Err(e) => {
                tracing::error!(%topic, partition = %number, %leader, "truncating to {}: {e}", truncation.offset);
                Applied::Rest(FAILED_REST)
            }
        };
    }
    let stored = data.with_bytes(|bytes| {
        let bounds = |stored: StoredEntry| {
            let header = &stored.header;
            (stored.at, stored.bytes.len(), header.base_offset(), header.next_offset())
        };
        entries(bytes, Check::Header).map(|stored| stored.map(bounds)).collect::<Vec<_>>()
    });
    let mut last = None;
    for stored in stored.unwrap_or_default() {
        let (at, length, base, next) = match stored {
            Ok(bounds) => bounds,
            Err(e) => {
                tracing::warn!(%topic, partition = %number, %leader, "an entry from the leader does not parse: {e}");
                return Applied::Rest(FAILED_REST);
            }
        };
        // A log started over at the leader's log start, which lies inside this entry (records
        // deleted below it): the entry comes whole from its base, so the log starts over there,
        // keeping its start where the leader's is (Kafka's follower does the same).
        let end = log.log_end();
        if last.is_none() && log.log_start() == end && base < end && end < next {
            if let Err(e) = partition.start_replica_over_within(base, end).await {
                tracing::error!(%topic, partition = %number, "starting over at {base}, the entry holding the log start {end}: {e}");
                return Applied::Rest(FAILED_REST);
            }
        }
        // The same bytes, shared rather than copied: the log stores them as they came.
        let entry = data.slice(at..at + length);
        match partition.append_replicated(entry) {
            Ok(appended) => last = Some(appended),
            Err(e) => {
                tracing::warn!(%topic, partition = %number, %leader, "appending the leader's entries: {e}");
                return match last {
                    Some(appended) => Applied::Appended(appended),
                    None => Applied::Rest(FAILED_REST),
                };
            }
        }
    }
    partition.followed_to(Offset(answer.high_watermark));
    // The leader's log start passed this replica's (its retention, a DeleteRecords, or the
    // offsets log's compaction): it moves here too, and the segments below it go, as Kafka's
    // followers move their log start with the leader's (within this replica's high watermark).
    let leader_start = Offset(answer.log_start);
    if leader_start > log.log_start() {
        if let Err(e) = partition.follow_log_start(leader_start).await {
            tracing::warn!(%topic, partition = %number, %leader, "moving the log start to the leader's {leader_start}: {e}");
        }
    }
    match last {
        Some(appended) => {
            log.sync_up_to(appended.next_offset);
            Applied::Appended(appended)
        }
        None => Applied::Nothing,
    }
}

/// The follower's fetch offset is outside the leader's log: past its end, the follower
/// truncates to it; below its start, the follower's log starts over, empty, at the leader's log
/// start (Kafka's `handleOutOfRangeError`).
async fn out_of_range(
    partition: &Rc<Partition>,
    answer: &ReplicaFetchAnswer,
    leader: NodeId,
) -> Applied {
    let log = partition.log();
    let (leader_start, leader_end) = (Offset(answer.log_start), Offset(answer.log_end));
    let end = log.log_end();
    if end > leader_end {
        return match truncate_or_start_over(partition, leader_end).await {
            Ok(_) => {
                tracing::info!(topic = %log.topic, partition = %log.partition, %leader, "past the leader's log end {leader_end}: truncated from {end}");
                Applied::Nothing
            }
            Err(e) => {
                tracing::error!(topic = %log.topic, partition = %log.partition, "truncating to the leader's end {leader_end}: {e}");
                Applied::Rest(FAILED_REST)
            }
        };
    }
    if end < leader_start {
        return match partition.start_replica_over(leader_start).await {
            Ok(_) => {
                tracing::warn!(topic = %log.topic, partition = %log.partition, %leader, "the log ended at {end}, before the leader's log start {leader_start}: started over there");
                Applied::Nothing
            }
            Err(e) => {
                tracing::error!(topic = %log.topic, partition = %log.partition, "starting over at the leader's log start {leader_start}: {e}");
                Applied::Rest(FAILED_REST)
            }
        };
    }
    // Out of range by the leader's epochs rather than its offsets: asked again after a rest.
    Applied::Rest(REFUSED_REST)
}

/// The native address of broker `leader`, as the metadata has it.
fn leader_address(shard: &Shard, leader: NodeId) -> Option<String> {
    let image = shard.metadata_image();
    let broker = image.brokers.get(&leader)?;
    let (host, port) = &broker.endpoints.native;
    Some(crate::config::host_port(host, *port))
}

/// Truncates the replica's log to `offset`, or, where that is below its log start (records
/// deleted there, then an unclean election to a replica that had less), starts it over there,
/// as Kafka's `truncateTo` does.
async fn truncate_or_start_over(
    partition: &Rc<Partition>,
    offset: Offset,
) -> Result<Offset, LogError> {
    match offset < partition.log().log_start() {
        true => partition.start_replica_over(offset).await,
        false => partition.truncate_replica(offset).await,
    }
}
