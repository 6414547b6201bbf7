//! What the cluster metadata costs as partitions grow: the memory one partition takes in the
//! image every broker keeps, the size of a topic's creation in the metadata log, and the time
//! the controller takes to decide and apply a heartbeat and a topic creation, and the size and
//! cost of a snapshot of the image (written by every voter now and then, read back at a restart
//! or by a broker that lagged behind the log's start).
//!
//! Run with `cargo bench --bench metadata_image`. Memory is counted by this binary's allocator
//! (live bytes before and after), not estimated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spate::cluster::decide::{Controller, Event, NewTopic, PartitionLimits};
use spate::cluster::metadata::{
    self, ClusterId, Endpoints, MetadataImage, Registration, TopicId, CLUSTER_PROTOCOL_VERSION,
};
use spate::types::NodeId;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counter only adds and
// subtracts the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SESSION: Duration = Duration::from_secs(9);
const BROKERS: i32 = 5;
const REPLICATION_FACTOR: u16 = 3;
/// Partitions per topic in the larger runs: Kafka-sized topics, under the per-topic limit.
const TOPIC_PARTITIONS: u32 = 1000;

fn decide(controller: &mut Controller, image: &mut MetadataImage, event: Event) -> usize {
    let batch = controller.decide(image, event, Instant::now()).expect("decided");
    let bytes = metadata::encode_batch(&batch).len();
    image.apply_batch(&batch).expect("applied");
    bytes
}

/// Five live brokers, registered and unfenced.
fn cluster() -> (Controller, MetadataImage, Vec<u64>) {
    let limits = PartitionLimits {
        per_broker: u32::MAX,
        internal_topic: "__consumer_offsets".into(),
        internal_partitions: 16,
        internal_replication_factor: 1,
    };
    let mut controller = Controller::new(SESSION, ClusterId(1), limits);
    let mut image = MetadataImage::default();
    let mut epochs = Vec::new();
    for n in 1..=BROKERS {
        let port = 9000 + n as u16;
        let registration = Registration {
            node: NodeId(n),
            incarnation: 1,
            directory: n as u128,
            rack: None,
            endpoints: Endpoints {
                kafka: ("10.0.0.1".into(), port),
                native: ("10.0.0.1".into(), port + 100),
            },
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            min_insync_replicas: None,
        };
        decide(&mut controller, &mut image, Event::Register { registration, cluster_id: None });
        let broker_epoch = image.brokers[&NodeId(n)].broker_epoch;
        decide(
            &mut controller,
            &mut image,
            Event::Heartbeat { node: NodeId(n), broker_epoch, via: None, storage_failing: false },
        );
        epochs.push(broker_epoch);
    }
    (controller, image, epochs)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    println!(
        "{:>10}  {:>16}  {:>22}  {:>18}  {:>20}  {:>19}  {:>14}  {:>14}",
        "partitions",
        "image bytes/part",
        "log bytes per topic",
        "heartbeat decision",
        "1000-partition topic",
        "snapshot bytes/part",
        "snapshot write",
        "snapshot read"
    );
    for partitions in [1_000u32, 10_000, 100_000] {
        let (mut controller, mut image, epochs) = cluster();
        let topics = partitions.div_ceil(TOPIC_PARTITIONS);
        let before = LIVE.load(Ordering::Relaxed);
        let mut log_bytes = 0;
        let mut create_times = Vec::new();
        for t in 0..topics {
            let name = format!("topic-{t}");
            let id = TopicId(u128::from(t) + 1);
            let (partitions, replication_factor) = (TOPIC_PARTITIONS, REPLICATION_FACTOR);
            let topic =
                NewTopic { name, partitions, replication_factor, assignment: None, config: vec![] };
            let create = Event::CreateTopic { topic, id };
            let started = Instant::now();
            log_bytes = decide(&mut controller, &mut image, create);
            create_times.push(started.elapsed());
        }
        let image_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        let total = topics * TOPIC_PARTITIONS;
        // A heartbeat that changes nothing: what every broker costs the controller every
        // broker.heartbeat.interval.ms.
        let beats: Vec<Duration> = (0..50)
            .map(|i| {
                let n = (i % BROKERS) + 1;
                let beat = Event::Heartbeat {
                    node: NodeId(n),
                    broker_epoch: epochs[n as usize - 1],
                    via: None,
                    storage_failing: false,
                };
                let started = Instant::now();
                decide(&mut controller, &mut image, beat);
                started.elapsed()
            })
            .collect();
        // A voter's snapshot of the image (`metadata.log.max.record.bytes.between.snapshots`
        // apart), and a lagging voter's or a restart's reading of it back, checks and all.
        let mut snapshot = Vec::new();
        let writes: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                snapshot = image.encode_snapshot();
                started.elapsed()
            })
            .collect();
        let reads: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let read = MetadataImage::decode_snapshot(&snapshot).expect("a snapshot");
                let took = started.elapsed();
                assert!(read == image, "the snapshot gives the image back");
                took
            })
            .collect();
        println!(
            "{total:>10}  {:>16}  {log_bytes:>22}  {:>15.1} µs  {:>17.1} ms  {:>19}  {:>11.1} ms  {:>11.1} ms",
            image_bytes / total as usize,
            median(beats).as_secs_f64() * 1e6,
            median(create_times).as_secs_f64() * 1e3,
            snapshot.len() / total as usize,
            median(writes).as_secs_f64() * 1e3,
            median(reads).as_secs_f64() * 1e3,
        );
    }
}
