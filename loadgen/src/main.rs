//! `spate-loadgen`: drives a Spate broker through the client library and reports throughput and
//! latency from HdrHistograms.
//!
//! Producers (`produce.rs`) run for a duration or a byte count, closed loop or at a fixed
//! `--rate`; consumers (`consume.rs`) then catch up on everything produced, or with `--tail` read
//! beside the producers and measure end-to-end latency. `--verify` (`verify.rs`) stamps every
//! record with a per-partition sequence number and fails the run on any gap, duplicate or
//! reordering.

mod consume;
mod produce;
mod report;
mod verify;

use std::io::IsTerminal;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use spate::client::Client;
use spate::native::messages::{Acks, ErrorCode, OFFSET_LATEST};

/// Requests a client connection queues before a send waits: verify mode keeps every
/// partition's in-flight requests below this so their wire order is their sequence order.
const CLIENT_QUEUE_REQUESTS: usize = 256;

#[derive(Parser, Debug)]
#[command(name = "spate-loadgen", about = "Load generator for Spate's native protocol")]
pub struct Args {
    /// The broker's native listener.
    #[arg(long, short = 'b', default_value_t = spate::client::default_address())]
    pub broker: String,
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Partitions of the topic (created if missing).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
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
    /// Connections to spread the partitions over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Length of the produce phase.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Stop producing after this many bytes of records instead (whichever comes first).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Only produce.
    #[arg(long)]
    pub skip_consume: bool,
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
}

impl Args {
    pub fn records_per_batch(&self) -> u64 {
        (self.batch_bytes / self.record_size.max(1)).max(1) as u64
    }

    /// Whether records carry a sequence number and send time (built fresh for every batch).
    pub fn stamped(&self) -> bool {
        self.verify || self.tail || self.rate.is_some()
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let executor = match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make() {
        Ok(executor) => executor,
        Err(e) => {
            eprintln!("spate-loadgen: starting the executor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match executor.run(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.verify && args.skip_consume {
        return Err("--verify needs the consume phase; drop --skip-consume".into());
    }
    let per_connection =
        args.inflight * (args.partitions as usize).div_ceil(args.connections.max(1));
    if args.verify && per_connection >= CLIENT_QUEUE_REQUESTS {
        let why = format!(
            "--verify needs fewer than {CLIENT_QUEUE_REQUESTS} requests in flight per connection              (inflight x partitions per connection is {per_connection})"
        );
        return Err(why);
    }
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(Client::connect(&args.broker).await.map_err(|e| e.to_string())?);
    }
    match clients[0].create_topic(&args.topic, args.partitions, vec![]).await {
        Err(e) if e.code() != Some(ErrorCode::TopicAlreadyExists) => return Err(e.to_string()),
        _ => {}
    }
    let mut starts = Vec::new();
    for partition in 0..args.partitions {
        let start = clients[0]
            .list_offset(&args.topic, partition, OFFSET_LATEST)
            .await
            .map_err(|e| e.to_string())?;
        starts.push(start as u64);
    }
    let args = Rc::new(args);
    let produced = produce::Produced::new(args.partitions);
    if std::io::stdout().is_terminal() && !args.json {
        glommio::spawn_local(progress(produced.totals.clone(), produced.done.clone())).detach();
    }
    let consumers = args.tail.then(|| {
        let done = Some(produced.done.clone());
        glommio::spawn_local(consume::run(args.clone(), clients.clone(), starts.clone(), done))
    });
    produce::run(&args, &clients, &produced).await;
    if let Some(e) = produced.totals.error.borrow().clone() {
        return Err(format!("produce failed: {e}"));
    }
    let mut json = format!("{{\"produce\":{}", produced.totals.json());
    let mut lines = vec![produced.totals.human("produce", args.record_size)];
    if args.rate.is_some() {
        let delay = produced.publish_delay.borrow();
        json.push_str(&format!(",\"publish_delay_us\":{}", report::histogram_json(&delay)));
        lines.push(report::histogram_human("produce: publish delay", &delay));
    }
    let consumed = match consumers {
        Some(task) => Some(task.await?),
        None if args.skip_consume => None,
        None => {
            // acks=0 batches may still be on their way to the log.
            glommio::timer::sleep(Duration::from_millis(200)).await;
            Some(consume::run(args.clone(), clients.clone(), starts, None).await?)
        }
    };
    let mut clean = true;
    if let Some(mut consumed) = consumed {
        json.push_str(&format!(",\"consume\":{}", consumed.totals.json()));
        lines.push(consumed.totals.human("consume", args.record_size));
        if args.tail {
            let e2e = consumed.end_to_end.borrow();
            json.push_str(&format!(",\"end_to_end_us\":{}", report::histogram_json(&e2e)));
            lines.push(report::histogram_human("consume: end-to-end", &e2e));
        }
        if args.verify {
            for (check, sequence) in consumed.checks.iter_mut().zip(&produced.sequences) {
                check.finish(sequence.acknowledged.get());
            }
            let checks = &consumed.checks;
            let sum = |f: fn(&verify::SequenceCheck) -> u64| checks.iter().map(f).sum::<u64>();
            let (records, missing, behind) =
                (sum(|c| c.records), sum(|c| c.missing), sum(|c| c.behind));
            clean = checks.iter().all(verify::SequenceCheck::is_clean);
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
    if !args.json {
        println!("{}", lines.join("\n"));
    }
    json.push('}');
    if args.json {
        println!("{json}");
    }
    if !clean {
        return Err("verification failed".into());
    }
    Ok(())
}

/// A line a second on a terminal: what the producers did in that second.
async fn progress(totals: Rc<report::Totals>, done: Rc<std::cell::Cell<bool>>) {
    let (mut seconds, mut last_bytes, mut last_records) = (0u64, 0u64, 0u64);
    while !done.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        seconds += 1;
        let (bytes, records) = (totals.bytes.get(), totals.records.get());
        let p99_ms = totals.latency.borrow().value_at_quantile(0.99) as f64 / 1e6;
        println!(
            "[{seconds:>4}s] produce {:>9.1} MiB/s {:>10} records/s  ack p99 so far {p99_ms:.1} ms",
            (bytes - last_bytes) as f64 / (1024.0 * 1024.0),
            records - last_records,
        );
        (last_bytes, last_records) = (bytes, records);
    }
}
