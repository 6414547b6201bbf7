//! The produce phase: batches per partition, for a duration or a byte count.
//!
//! Closed loop (default): `--inflight` requests per partition, each sent as soon as the previous
//! one in its slot is acknowledged. Open loop (`--rate`): each partition sends a batch on a fixed
//! schedule whatever the broker does, and latency is measured from the *scheduled* time, so a
//! stalled broker shows up as latency instead of silently lowering the load (coordinated
//! omission); how late sends left against the schedule is the publish delay.
//!
//! Without stamps, a partition's batch is archived once and re-sent, so the generator's CPU goes
//! to the wire. With stamps (`--verify`, `--tail`, `--rate`), every batch is built fresh, each
//! record carrying its partition's sequence number and its send time; all of a partition's
//! requests then share one connection so their order on the wire is their sequence order.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use spate::record::{BatchBuilder, BatchMeta, OwnedRecord};

use crate::link::{encode_batch, Link, ProduceError, Rediscovery, Routes};
use crate::report::Totals;
use crate::shape::{KeySource, Rng, SizeRange};
use crate::verify;
use crate::Args;

/// How long a batch is sent again through a failover before the run fails.
const FAILOVER_WAIT_MAX: Duration = Duration::from_secs(30);
/// Between a refusal and asking for the leader again.
const FAILOVER_RETRY_WAIT: Duration = Duration::from_millis(50);

/// One partition's sequence numbers.
#[derive(Default)]
pub struct PartitionSequence {
    next: Cell<u64>,
    /// Records acknowledged so far; acknowledgements arrive in sequence order.
    pub acknowledged: Cell<u64>,
}

pub struct Produced {
    pub totals: Rc<Totals>,
    pub sequences: Vec<Rc<PartitionSequence>>,
    /// How late each open-loop send left against its schedule.
    pub publish_delay: Rc<RefCell<Histogram<u64>>>,
    /// Set when the phase is over, for consumers running beside it.
    pub done: Rc<Cell<bool>>,
    /// Set on Ctrl-C: producers stop as if their time were up.
    pub interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Produced {
    /// State for a topic of `partitions` partitions (a thread uses only its own).
    pub fn new(
        partitions: u32,
        shared: std::sync::Arc<crate::report::SharedCounts>,
        interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            totals: Rc::new(Totals::new(shared)),
            sequences: (0..partitions).map(|_| Rc::new(PartitionSequence::default())).collect(),
            publish_delay: Rc::new(RefCell::new(spate::metrics::new_histogram())),
            done: Rc::new(Cell::new(false)),
            interrupted,
        }
    }
}

/// An archived batch and the bytes of record values in it.
#[derive(Clone)]
struct Built {
    meta: BatchMeta,
    payload: Bytes,
    value_bytes: u64,
}

/// What every sending task of a partition shares.
#[derive(Clone)]
struct Sender {
    /// To the partition's leader; replaced when a failover moves it.
    client: Rc<RefCell<Link>>,
    rediscovery: Rc<Rediscovery>,
    topic: String,
    partition: u32,
    args: Rc<Args>,
    totals: Rc<Totals>,
    sequence: Rc<PartitionSequence>,
    prebuilt: Option<Built>,
    keys: Rc<KeySource>,
    rng: Rc<RefCell<Rng>>,
    interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// This thread's share of `--max-bytes`.
    byte_budget: u64,
    /// This thread's share of `--records`, and the records it has sent toward it (counted when
    /// sent, so the senders in flight stop within a batch of it).
    record_budget: u64,
    records_sent: Rc<Cell<u64>>,
    /// Records per batch.
    batch_records: u64,
}

impl Sender {
    fn next_batch(&self) -> Built {
        match &self.prebuilt {
            Some(prebuilt) => prebuilt.clone(),
            None => {
                let count = self.batch_records;
                let first = self.sequence.next.get();
                self.sequence.next.set(first + count);
                let stamp = Some((first, verify::now_ns()));
                let mut rng = self.rng.borrow_mut();
                let shape = Shape { sizes: self.args.record_size, protocol: self.args.protocol };
                build(count, shape, &self.keys, &mut rng, stamp, self.partition)
            }
        }
    }

    /// Sends one batch; latency runs from `since` (the send, or the schedule in open loop).
    /// A refusal a leader change brings (or a lost connection) sends it again to the leader
    /// found anew, for up to [`FAILOVER_WAIT_MAX`], and counts the gap. (Sent again, a batch
    /// the old leader had taken may be stored twice, and with more than one in flight
    /// per partition batches may change order: `--verify` reports both.)
    async fn send(&self, since: Instant) {
        let Built { meta, payload, value_bytes } = self.next_batch();
        let count = u64::from(meta.record_count);
        if self.totals.counting() {
            self.records_sent.set(self.records_sent.get() + count);
        }
        let mut refused_at: Option<Instant> = None;
        loop {
            let client = self.client.borrow().clone();
            let (topic, partition, acks) = (&self.topic, self.partition, self.args.acks);
            // Bounded as Kafka's request.timeout.ms: a leader paused or cut off answers nothing.
            let produced = client.produce(topic, partition, acks, meta, payload.clone());
            let late = async {
                glommio::timer::sleep(FAILOVER_WAIT_MAX).await;
                let message = format!("no answer within {FAILOVER_WAIT_MAX:?}");
                Err(ProduceError { message, failover: true })
            };
            match futures_lite::future::or(produced, late).await {
                Ok(()) => {
                    if let Some(refused_at) = refused_at {
                        self.totals.failover_gaps.borrow_mut().push(refused_at.elapsed());
                    }
                    self.totals.add(count, value_bytes, since.elapsed());
                    self.sequence.acknowledged.set(self.sequence.acknowledged.get() + count);
                    return;
                }
                Err(e) if e.failover && !self.interrupted.load(Ordering::Relaxed) => {
                    let first = *refused_at.get_or_insert_with(Instant::now);
                    if first.elapsed() > FAILOVER_WAIT_MAX {
                        self.totals.fail(format!("{} (for {FAILOVER_WAIT_MAX:?})", e.message));
                        return;
                    }
                    glommio::timer::sleep(FAILOVER_RETRY_WAIT).await;
                    if let Ok(link) = self.rediscovery.leader_link(topic, partition).await {
                        *self.client.borrow_mut() = link;
                    }
                }
                Err(e) => {
                    self.totals.fail(e.message);
                    return;
                }
            }
        }
    }

    /// The byte and record budgets are split evenly over the threads, each of which knows only
    /// its own counts.
    fn keep_going(&self, deadline: Instant) -> bool {
        let interrupted = self.interrupted.load(std::sync::atomic::Ordering::Relaxed);
        Instant::now() < deadline
            && self.totals.bytes.get() < self.byte_budget
            && self.records_sent.get() < self.record_budget
            && !self.totals.failed()
            && !interrupted
    }
}

/// Produces to `partitions` (this thread's share) until the duration or byte budget is spent.
/// The figures count from `measure_from` (the end of the warm-up); the duration follows it.
pub async fn run(
    args: &Rc<Args>,
    clients: &Routes,
    rediscovery: &Rc<Rediscovery>,
    produced: &Produced,
    partitions: &[u32],
    measure_from: Instant,
) {
    produced.totals.count_from(measure_from);
    let deadline = measure_from + Duration::from_secs(args.duration_secs);
    let byte_budget = args.max_bytes.map_or(u64::MAX, |b| b / args.thread_count() as u64);
    let record_budget = args.records.map_or(u64::MAX, |r| r / args.thread_count() as u64);
    let records_sent = Rc::new(Cell::new(0));
    let sending = sending_partitions(args);
    let batch_records = match args.rate {
        Some(rate) => args.lingered_batch(per_partition_rate(rate, sending)),
        None => args.records_per_batch(),
    };
    let mut tasks = Vec::new();
    for &partition in partitions {
        let keys = Rc::new(KeySource::for_partition(args.keys, partition, args.partitions));
        if !keys.has_keys() {
            continue; // No key of the set lands here: a keyed producer would send nothing.
        }
        let stamped = args.stamped();
        let mut rng = Rng::new(u64::from(partition) + 1);
        let shape = Shape { sizes: args.record_size, protocol: args.protocol };
        let prebuilt =
            (!stamped).then(|| build(batch_records, shape, &keys, &mut rng, None, partition));
        let pool = match clients.pool(partition) {
            Ok(pool) => pool,
            Err(e) => {
                produced.totals.fail(e);
                continue;
            }
        };
        let stamped_link = Rc::new(RefCell::new(pool.link(partition as usize)));
        let sender_for = |slot: usize| {
            // Stamped batches keep their order on one connection per partition.
            let client = match stamped {
                true => stamped_link.clone(),
                false => Rc::new(RefCell::new(pool.link(partition as usize + slot))),
            };
            Sender {
                client,
                rediscovery: rediscovery.clone(),
                topic: args.topic.clone(),
                partition,
                args: args.clone(),
                totals: produced.totals.clone(),
                sequence: produced.sequences[partition as usize].clone(),
                prebuilt: prebuilt.clone(),
                keys: keys.clone(),
                rng: Rc::new(RefCell::new(Rng::new(u64::from(partition) << 16 | slot as u64))),
                interrupted: produced.interrupted.clone(),
                byte_budget,
                record_budget,
                records_sent: records_sent.clone(),
                batch_records,
            }
        };
        match args.rate {
            Some(rate) => {
                let sender = sender_for(0);
                let delay = produced.publish_delay.clone();
                tasks.push(glommio::spawn_local(open_loop(sender, rate, sending, deadline, delay)));
            }
            None => {
                for slot in 0..args.inflight.max(1) {
                    let sender = sender_for(slot);
                    tasks.push(glommio::spawn_local(async move {
                        while sender.keep_going(deadline) {
                            sender.send(Instant::now()).await;
                        }
                    }));
                }
            }
        }
    }
    for task in tasks {
        task.await;
    }
    produced.totals.elapsed.set(measure_from.elapsed());
    produced.done.set(true);
}

/// Sends one partition's batches on a fixed schedule, at most `--inflight` at a time.
/// `sending_partitions` is how many partitions share the rate (those that get records at all).
async fn open_loop(
    sender: Sender,
    rate: u64,
    sending_partitions: u32,
    deadline: Instant,
    delay: Rc<RefCell<Histogram<u64>>>,
) {
    let per_partition = per_partition_rate(rate, sending_partitions);
    let interval = Duration::from_secs_f64(sender.batch_records as f64 / per_partition);
    let inflight = sender.args.inflight.max(1) as u64;
    let slots = Rc::new(glommio::sync::Semaphore::new(inflight));
    let mut scheduled = Instant::now();
    while sender.keep_going(deadline) {
        if let Some(wait) = scheduled.min(deadline).checked_duration_since(Instant::now()) {
            glommio::timer::sleep(wait).await;
            continue; // the deadline or Ctrl-C may have come meanwhile
        }
        let Ok(slot) = slots.acquire_static_permit(1).await else { break };
        if sender.totals.counting() {
            let late = Instant::now().saturating_duration_since(scheduled);
            let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).max(1);
            delay.borrow_mut().saturating_record(ns);
        }
        let (sender, since) = (sender.clone(), scheduled);
        glommio::spawn_local(async move {
            sender.send(since).await;
            drop(slot);
        })
        .detach();
        scheduled += interval;
    }
    // Every send holds a slot until it is answered: all slots back means all sends are done.
    let _ = slots.acquire(inflight).await;
}

/// Records per second each sending partition gets of the open loop's `rate`.
fn per_partition_rate(rate: u64, sending_partitions: u32) -> f64 {
    (rate as f64 / f64::from(sending_partitions.max(1))).max(1e-3)
}

/// Partitions of the topic that get records: with `--keys N`, only those some key lands in.
fn sending_partitions(args: &Args) -> u32 {
    let partitions = args.partitions;
    (0..partitions)
        .filter(|p| KeySource::for_partition(args.keys, *p, partitions).has_keys())
        .count() as u32
}

/// How batches are built: value sizes, and the protocol they are encoded for.
#[derive(Clone, Copy)]
struct Shape {
    sizes: SizeRange,
    protocol: crate::link::Protocol,
}

/// A batch of `count` records with value sizes from `shape` and keys from `keys`. With a
/// `stamp` (first sequence number, send time), every value starts with its sequence number and
/// the send time; without one, values hold a pattern and the batch is built once and re-sent.
fn build(
    count: u64,
    shape: Shape,
    keys: &KeySource,
    rng: &mut Rng,
    stamp: Option<(u64, u64)>,
    partition: u32,
) -> Built {
    let mut builder = BatchBuilder::default();
    let now = spate::now_ms();
    let mut value_bytes = 0u64;
    for i in 0..count {
        let value = match stamp {
            Some((first_seq, sent_ns)) => {
                let mut value = vec![0u8; shape.sizes.pick(rng).max(verify::STAMP_BYTES)];
                verify::stamp(&mut value, first_seq + i, sent_ns);
                value
            }
            None => (0..shape.sizes.pick(rng))
                .map(|j| (i as usize * 31 + j * 7 + partition as usize) as u8)
                .collect(),
        };
        value_bytes += value.len() as u64;
        let key = keys.pick(rng);
        builder.push(OwnedRecord { key, value: Some(value), headers: Vec::new(), timestamp: now });
    }
    let (meta, archive) = builder.build();
    // Converting a batch this process just built cannot fail.
    let payload = encode_batch(shape.protocol, &meta, archive).expect("encoding a built batch");
    Built { meta, payload, value_bytes }
}
