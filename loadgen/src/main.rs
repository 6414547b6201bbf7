//! `spate-loadgen`: drives a Spate broker through the client library and reports throughput and
//! latency from HdrHistograms.
//!
//! Producers (`produce.rs`) run for a duration or a byte count, closed loop or at a fixed
//! `--rate`; consumers (`consume.rs`) then catch up on everything produced, or with `--tail` read
//! beside the producers and measure end-to-end latency. `--verify` (`verify.rs`) stamps every
//! record with a per-partition sequence number and fails the run on any gap, duplicate or
//! reordering.

mod consume;
mod group;
mod kafka;
mod link;
mod plot;
mod produce;
mod report;
mod shape;
mod verify;

use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use hdrhistogram::Histogram;
use link::{Link, Protocol, Rediscovery, Routes};
use report::{SharedCounts, Snapshot};
use spate::native::messages::Acks;
use verify::SequenceCheck;

/// Requests a client connection queues before a send waits: verify mode keeps every
/// partition's in-flight requests below this so their wire order is their sequence order.
const CLIENT_QUEUE_REQUESTS: usize = 256;

#[derive(Parser, Debug, Clone)]
// A flag given twice takes its last value, so a script's own flags can follow (and override)
// what its caller passes.
#[command(
    name = "spate-loadgen",
    about = "Load generator for Spate, over either protocol",
    args_override_self = true
)]
pub struct Args {
    /// The broker's listener for --protocol [default: 127.0.0.1:9192 native, 127.0.0.1:9092 kafka]
    #[arg(long, short = 'b')]
    pub broker: Option<String>,
    /// The wire protocol to load the broker through.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Partitions of the topic (created if missing).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Bytes of each record's value: a size, or a range MIN-MAX picked uniformly per record.
    #[arg(long, default_value = "1024")]
    pub record_size: shape::SizeRange,
    /// Record keys: none, random (16 bytes), or a number of distinct keys. Keyed records go to
    /// the partition Kafka's murmur2 partitioner picks, as from a keyed Kafka producer.
    #[arg(long, default_value = "none")]
    pub keys: shape::Keys,
    /// Bytes of records per produce request.
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    pub acks: Acks,
    /// Produce requests in flight per partition. At 4 the loadgen, not the broker, limited a
    /// 4-partition run here (1.08 GiB/s vs 1.48 GiB/s at 8).
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Connections per loadgen thread to spread its partitions over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Loadgen threads, unpinned; partitions are dealt out to them. See also --cores.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to run one pinned loadgen thread each on (e.g. 2-3); overrides --threads.
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Length of the produce phase, after the warm-up.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Seconds of load before anything is counted (connections, caches and the disk settle).
    #[arg(long, default_value_t = 0)]
    pub warmup_secs: u64,
    /// Stop producing after this many bytes of records instead (whichever comes first).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Stop producing after this many records instead (whichever comes first; counted after
    /// the warm-up).
    #[arg(long)]
    pub records: Option<u64>,
    /// Open loop: close a partition's batch after this long even if it is not full, as a Kafka
    /// producer's linger.ms does; at low rates batches get smaller and leave sooner. Closed loop
    /// always sends full batches.
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<f64>,
    /// Only produce.
    #[arg(long)]
    pub skip_consume: bool,
    /// Only consume: read what the topic holds, from each partition's first offset to its end
    /// (a catch-up read of an earlier run's records).
    #[arg(long)]
    pub skip_produce: bool,
    /// Readers per partition in the consume phase, each reading the whole range on a connection
    /// of its own, as that many consumer groups would.
    #[arg(long, default_value_t = 1)]
    pub readers: usize,
    /// Consume as this consumer group (native protocol): members share the partitions through
    /// the broker's coordinator, instead of one reader per partition.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Group members per loadgen thread (with --group).
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Bytes asked for per fetch in the consume phase.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub fetch_bytes: u32,
    /// Stamp every record with a sequence number and check, when consuming, that each partition
    /// holds every acknowledged record once and in order; exit non-zero otherwise.
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON object instead of the summary lines.
    #[arg(long)]
    pub json: bool,
    /// Consume beside the producers (long polls) and report end-to-end latency, instead of
    /// catching up afterwards.
    #[arg(long)]
    pub tail: bool,
    /// Open loop: send this many records per second in all, on a fixed schedule, and measure
    /// latency from the scheduled send time. Default: closed loop, as fast as acks come back.
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    pub rate: Option<u64>,
    /// Also write each latency histogram as an HdrHistogram percentile file (.hgrm) here.
    #[arg(long, value_name = "DIR")]
    pub hgrm: Option<std::path::PathBuf>,
    /// Also draw latency by percentile for the run as an SVG chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

impl Args {
    pub fn records_per_batch(&self) -> u64 {
        (self.batch_bytes / self.record_size.mean().max(1)).max(1) as u64
    }

    /// Records in each open-loop batch of a partition receiving `records_per_sec`: a full batch,
    /// or what arrives within `--linger-ms` if that is fewer.
    pub fn lingered_batch(&self, records_per_sec: f64) -> u64 {
        let full = self.records_per_batch();
        match self.linger_ms {
            Some(linger) => ((records_per_sec * linger / 1000.0).round() as u64).clamp(1, full),
            None => full,
        }
    }

    /// Whether records carry a sequence number and send time (built fresh for every batch).
    pub fn stamped(&self) -> bool {
        self.verify || self.tail || self.rate.is_some()
    }

    /// Where to connect: `--broker`, else the local broker's listener for the protocol.
    pub fn address(&self) -> String {
        self.broker.clone().unwrap_or_else(|| match self.protocol {
            Protocol::Native => spate::client::default_address(),
            Protocol::Kafka => format!("127.0.0.1:{}", spate::config::KAFKA_PORT_DEFAULT),
        })
    }

    pub fn thread_count(&self) -> usize {
        match &self.cores {
            Some(cores) => spate::config::parse_cores(cores).map_or(1, |c| c.len()),
            None => self.threads.max(1),
        }
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the threads share while they run.
#[derive(Default)]
struct Shared {
    produced: Arc<SharedCounts>,
    /// Ctrl-C: stop producing and report what was measured.
    interrupted: Arc<AtomicBool>,
    /// When every thread starts counting (after the warm-up).
    measure_from: std::sync::OnceLock<std::time::Instant>,
    next_thread: AtomicUsize,
    producers_done: AtomicUsize,
    finished: AtomicBool,
    /// Records read by every thread's group members (with --group).
    group_consumed: Arc<std::sync::atomic::AtomicU64>,
}

/// Marks this thread's producers done when dropped.
struct ProducingDone<'a>(&'a AtomicUsize);

impl Drop for ProducingDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What one thread measured, sent back to the main thread.
struct ThreadOutcome {
    produce: Snapshot,
    publish_delay: Histogram<u64>,
    consume: Option<Snapshot>,
    end_to_end: Histogram<u64>,
    checks: Vec<SequenceCheck>,
}

fn run(args: Args) -> Result<(), String> {
    check(&args)?;
    let (starts, leaders) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| format!("starting the executor: {e}"))?
        .run(prepare(&args))?;
    let placement = match &args.cores {
        Some(cores) => pinned(&spate::config::parse_cores(cores).map_err(|e| e.to_string())?)?,
        None => PoolPlacement::Unbound(args.thread_count()),
    };
    let shared = Arc::new(Shared::default());
    // The first Ctrl-C ends the run early with a full report; a second one exits at once.
    let sigint = signal_hook::consts::SIGINT;
    signal_hook::flag::register_conditional_shutdown(sigint, 130, shared.interrupted.clone())
        .and_then(|_| signal_hook::flag::register(sigint, shared.interrupted.clone()))
        .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    let warmup = Duration::from_secs(args.warmup_secs);
    let _ = shared.measure_from.set(std::time::Instant::now() + warmup);
    let progress = (std::io::stdout().is_terminal() && !args.json).then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || print_progress(&shared))
    });
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("spate-loadgen")
        .on_all_shards({
            let start = Arc::new((starts, leaders));
            let (args, shared) = (Arc::new(args.clone()), shared.clone());
            move || {
                let (args, start, shared) = (args.clone(), start.clone(), shared.clone());
                async move {
                    let (starts, leaders) = (*start).clone();
                    thread_main((*args).clone(), starts, leaders, shared).await
                }
            }
        })
        .map_err(|e| format!("starting loadgen threads: {e}"))?;
    let mut outcomes = Vec::new();
    for result in handles.join_all() {
        outcomes.push(result.map_err(|e| format!("loadgen thread failed: {e}"))??);
    }
    shared.finished.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    report(&args, outcomes)
}

fn check(args: &Args) -> Result<(), String> {
    if args.group.is_some() {
        if args.protocol != Protocol::Native {
            return Err(
                "--group consumes through the native protocol; drop --protocol kafka".into()
            );
        }
        if args.verify || args.tail {
            return Err(
                "--group reads at least once across rebalances: not with --verify or --tail".into(),
            );
        }
        if args.skip_consume {
            return Err("--group names the consumers; drop --skip-consume".into());
        }
    }
    if args.verify && args.skip_consume {
        return Err("--verify needs the consume phase; drop --skip-consume".into());
    }
    if args.skip_produce && (args.skip_consume || args.verify || args.tail || args.group.is_some())
    {
        return Err("--skip-produce only consumes: not with --skip-consume, --verify, --tail or \
                    --group"
            .into());
    }
    if args.readers != 1 && (args.verify || args.group.is_some() || args.readers == 0) {
        return Err("--readers takes 1 or more, and 1 with --verify or --group".into());
    }
    let per_connection =
        args.inflight * (args.partitions as usize).div_ceil(args.connections.max(1));
    if args.verify && per_connection >= CLIENT_QUEUE_REQUESTS {
        return Err(format!(
            "--verify needs fewer than {CLIENT_QUEUE_REQUESTS} requests in flight per connection \
             (inflight x partitions per connection is {per_connection})"
        ));
    }
    Ok(())
}

fn pinned(cores: &[usize]) -> Result<PoolPlacement, String> {
    let online = CpuSet::online().map_err(|e| format!("reading online CPUs: {e}"))?;
    let sets = cores.iter().map(|&cpu| online.clone().filter(|l| l.cpu == cpu)).collect::<Vec<_>>();
    if sets.iter().any(CpuSet::is_empty) {
        return Err(format!("--cores {cores:?} names a CPU that is not online"));
    }
    Ok(PoolPlacement::Custom(sets))
}

/// Creates the topic if needed and returns where each partition ends now (the run reads from
/// there; with --skip-produce, where it starts) and where each partition's leader is, in a
/// cluster of any size (the broker named is only where the loadgen learns it).
async fn prepare(args: &Args) -> Result<(Vec<u64>, Vec<String>), String> {
    let link = Link::connect(args.protocol, &args.address()).await?;
    link.ensure_topic(&args.topic, args.partitions).await?;
    let leaders = link.leaders(&args.topic, args.partitions).await?;
    let all: Vec<u32> = (0..args.partitions).collect();
    let routes = Routes::connect(args.protocol, &leaders, &all, 1).await?;
    let mut starts = Vec::new();
    for partition in 0..args.partitions {
        let link = routes.pool(partition)?.link(0);
        let start = match args.skip_produce {
            true => link.earliest(&args.topic, partition).await?,
            false => latest_once_known(&link, &args.topic, partition).await?,
        };
        starts.push(start);
    }
    if let Some(group) = &args.group {
        group::start_group_at(args, group, &starts).await?;
    }
    Ok((starts, leaders))
}

/// Where `partition` ends now, asked of its leader, which may not know the topic for a moment
/// after its creation through another broker: asked again for a while.
async fn latest_once_known(link: &Link, topic: &str, partition: u32) -> Result<u64, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match link.latest(topic, partition).await {
            Err(_) if std::time::Instant::now() < deadline => {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            outcome => return outcome,
        }
    }
}

/// One loadgen thread: its share of the partitions, its own connections, producers, consumers.
async fn thread_main(
    args: Args,
    starts: Vec<u64>,
    leaders: Vec<String>,
    shared: Arc<Shared>,
) -> Result<ThreadOutcome, String> {
    let threads = args.thread_count();
    let id = shared.next_thread.fetch_add(1, Ordering::SeqCst);
    // Counted however this thread's producing ends (even by an error), so threads waiting to
    // catch up are never left waiting for it.
    let producing = ProducingDone(&shared.producers_done);
    let partitions: Vec<u32> =
        (0..args.partitions).filter(|p| *p as usize % threads == id).collect();
    // Consumers get connections of their own: responses come back in request order, so a
    // long-polling fetch would hold up every produce answer queued behind it.
    // Each to the leader of the partitions it carries: `--connections` to each leader.
    let clients =
        Routes::connect(args.protocol, &leaders, &partitions, args.connections.max(1)).await?;
    // And one per partition read here, to its leader: a native fetch covers one partition, and
    // a long poll on an idle one would hold up a busy one's data on a shared connection.
    let read_here = !args.skip_consume && args.group.is_none();
    let consumed_here: &[u32] = if read_here { &partitions } else { &[] };
    let mut consumer_clients = Vec::new();
    for _ in 0..args.readers {
        consumer_clients.push(Routes::connect_each(args.protocol, &leaders, consumed_here).await?);
    }
    let args = Rc::new(args);
    let measure_from = shared.measure_from.get().copied().unwrap_or_else(std::time::Instant::now);
    let produced = produce::Produced::new(
        args.partitions,
        shared.produced.clone(),
        shared.interrupted.clone(),
    );
    let consumers = args.tail.then(|| {
        let done = Some(produced.done.clone());
        let (clients, starts, partitions) =
            (consumer_clients.clone(), starts.clone(), partitions.clone());
        glommio::spawn_local(consume::run(
            args.clone(),
            clients,
            starts,
            done,
            partitions,
            measure_from,
        ))
    });
    let rediscovery = Rc::new(Rediscovery::new(args.protocol, args.address(), &leaders));
    if !args.skip_produce {
        produce::run(&args, &clients, &rediscovery, &produced, &partitions, measure_from).await;
    }
    drop(producing);
    if let Some(e) = produced.totals.error.borrow().clone() {
        return Err(format!("produce failed: {e}"));
    }
    let interrupted = shared.interrupted.load(Ordering::Relaxed);
    let consumed = match consumers {
        Some(task) => Some(task.await?),
        // After Ctrl-C, catch up only when asked to verify.
        None if args.skip_consume || (interrupted && !args.verify) => None,
        None => {
            // Catch up only once every thread has stopped producing (and acks=0 batches landed).
            while shared.producers_done.load(Ordering::SeqCst) < threads {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let now = std::time::Instant::now();
            match &args.group {
                Some(group) => {
                    let consumed = shared.group_consumed.clone();
                    Some(group::run(args.clone(), group.clone(), &starts, consumed, now).await?)
                }
                None => {
                    let (clients, parts) = (consumer_clients, partitions.clone());
                    Some(consume::run(args.clone(), clients, starts, None, parts, now).await?)
                }
            }
        }
    };
    let mut checks = Vec::new();
    let (mut consume, mut end_to_end) = (None, spate::metrics::new_histogram());
    if let Some(consumed) = consumed {
        for (mut check, partition) in consumed.checks.into_iter().zip(&partitions) {
            check.finish(produced.sequences[*partition as usize].acknowledged.get());
            checks.push(check);
        }
        consume = Some(consumed.totals.snapshot());
        end_to_end = consumed.end_to_end.borrow().clone();
    }
    let publish_delay = produced.publish_delay.borrow().clone();
    Ok(ThreadOutcome {
        produce: produced.totals.snapshot(),
        publish_delay,
        consume,
        end_to_end,
        checks,
    })
}

/// Merges the threads' figures and prints them; fails the run when verification failed.
fn report(args: &Args, outcomes: Vec<ThreadOutcome>) -> Result<(), String> {
    let merge_histograms = |pick: fn(&ThreadOutcome) -> &Histogram<u64>| {
        let mut total = spate::metrics::new_histogram();
        outcomes.iter().for_each(|o| {
            let _ = total.add(pick(o));
        });
        total
    };
    let produce = Snapshot::merge(outcomes.iter().map(|o| o.produce.clone()))
        .ok_or("no loadgen thread ran")?;
    // Every latency histogram of the run, by name, for --hgrm and --plot.
    let mut histograms: Vec<(&str, Histogram<u64>)> =
        vec![("produce ack", produce.latency.clone())];
    let mut json = format!("{{\"produce\":{}", produce.json());
    let mut lines = Vec::new();
    if !args.skip_produce {
        lines.push(produce.human("produce", args.record_size));
    }
    lines.extend(produce.failovers_human("produce"));
    if args.rate.is_some() {
        let delay = merge_histograms(|o| &o.publish_delay);
        json.push_str(&format!(",\"publish_delay_us\":{}", report::histogram_json(&delay)));
        lines.push(report::histogram_human("produce: publish delay", &delay));
        histograms.push(("publish delay", delay));
    }
    let mut clean = true;
    if let Some(consume) = Snapshot::merge(outcomes.iter().filter_map(|o| o.consume.clone())) {
        json.push_str(&format!(",\"consume\":{}", consume.json()));
        lines.push(consume.human("consume", args.record_size));
        histograms.push(("consume fetch", consume.latency.clone()));
        if args.tail {
            let e2e = merge_histograms(|o| &o.end_to_end);
            json.push_str(&format!(",\"end_to_end_us\":{}", report::histogram_json(&e2e)));
            lines.push(report::histogram_human("consume: end-to-end", &e2e));
            histograms.push(("end-to-end", e2e));
        }
        if args.verify {
            let checks: Vec<&SequenceCheck> = outcomes.iter().flat_map(|o| &o.checks).collect();
            let sum = |f: fn(&SequenceCheck) -> u64| checks.iter().map(|c| f(c)).sum::<u64>();
            let (records, missing, behind) =
                (sum(|c| c.records), sum(|c| c.missing), sum(|c| c.behind));
            clean = checks.iter().all(|c| c.is_clean());
            json.push_str(&format!(
                ",\"verify\":{{\"records\":{records},\"missing\":{missing},\"duplicate_or_reordered\":{behind},\"ok\":{clean}}}"
            ));
            let verdict = if clean { "OK" } else { "FAILED" };
            lines.push(format!(
                "verify: {records} records checked in {} partitions: {missing} missing, {behind} duplicate or reordered: {verdict}",
                checks.len()
            ));
        }
    }
    json.push('}');
    println!("{}", if args.json { json } else { lines.join("\n") });
    write_histograms(args, &histograms)?;
    if !clean {
        return Err("verification failed".into());
    }
    Ok(())
}

/// `--hgrm` files and the `--plot` chart.
fn write_histograms(args: &Args, histograms: &[(&str, Histogram<u64>)]) -> Result<(), String> {
    if let Some(dir) = &args.hgrm {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (name, histogram) in histograms {
            let path = dir.join(format!("{}.hgrm", name.replace(' ', "_")));
            std::fs::write(&path, spate::metrics::write_hgrm(histogram))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "spate-loadgen: {} partitions, {} B records, acks={}{}",
            args.partitions,
            args.record_size,
            args.acks,
            args.rate.map_or(String::new(), |r| format!(", {r} records/s"))
        );
        let series: Vec<(&str, &Histogram<u64>)> =
            histograms.iter().map(|(n, h)| (*n, h)).collect();
        std::fs::write(path, plot::svg(&title, &series))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A line a second on a terminal: what the producers did in that second, across all threads.
fn print_progress(shared: &Shared) {
    let (mut seconds, mut last_bytes, mut last_records) = (0u64, 0u64, 0u64);
    while !shared.finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        seconds += 1;
        let bytes = shared.produced.bytes.load(Ordering::Relaxed);
        let records = shared.produced.records.load(Ordering::Relaxed);
        println!(
            "[{seconds:>4}s] produce {:>9.1} MiB/s {:>10} records/s",
            (bytes - last_bytes) as f64 / (1024.0 * 1024.0),
            records - last_records,
        );
        (last_bytes, last_records) = (bytes, records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_closes_batches_early_only_when_they_would_not_fill() {
        let args = |extra: &[&str]| {
            let mut argv =
                vec!["spate-loadgen", "--record-size", "1000", "--batch-bytes", "100000"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).expect("valid arguments")
        };
        assert_eq!(args(&[]).lingered_batch(1_000.0), 100);
        // 1,000 records/s for 5 ms: 5 records a batch.
        assert_eq!(args(&["--linger-ms", "5"]).lingered_batch(1_000.0), 5);
        // Fast enough to fill the batch before the linger passes.
        assert_eq!(args(&["--linger-ms", "5"]).lingered_batch(1_000_000.0), 100);
        // Never an empty batch.
        assert_eq!(args(&["--linger-ms", "0.1"]).lingered_batch(10.0), 1);
    }
}
