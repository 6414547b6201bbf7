//! `spate-loadgen`: drives a Spate broker through the client library and reports throughput and
//! latency from HdrHistograms.
//!
//! A run has two phases: produce (batches pre-built once and re-sent, so the generator spends
//! its CPU on the wire, not on encoding) for a duration or a byte count, then a catch-up consume
//! of everything produced, from offset 0, with every entry's CRC and archive checked.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use spate::client::{Client, ClientError};
use spate::native::messages::{Acks, ErrorCode, OFFSET_LATEST};
use spate::record::{BatchBuilder, BatchMeta, OwnedRecord};

#[derive(Parser, Debug)]
#[command(name = "spate-loadgen", about = "Load generator for Spate's native protocol")]
struct Args {
    /// The broker's native listener.
    #[arg(long, short = 'b', default_value_t = spate::client::default_address())]
    broker: String,
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Partitions of the topic (created if missing).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Bytes of records per produce request.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: Acks,
    /// Produce requests in flight per partition. At 4 the loadgen, not the broker, limited a
    /// 4-partition run here (1.08 GiB/s vs 1.48 GiB/s at 8).
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Connections to spread the partitions over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Length of the produce phase.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Stop producing after this many bytes of records instead (whichever comes first).
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Only produce.
    #[arg(long)]
    skip_consume: bool,
    /// Bytes asked for per fetch in the consume phase.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    fetch_bytes: u32,
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
    let produced = produce_phase(&args, &clients).await?;
    produced.report("produce", &args);
    if !args.skip_consume {
        let consumed = consume_phase(&args, &clients, &starts).await?;
        consumed.report("consume", &args);
    }
    Ok(())
}

/// What a phase did.
struct Totals {
    records: Cell<u64>,
    bytes: Cell<u64>,
    latency: std::cell::RefCell<Histogram<u64>>,
    elapsed: Cell<Duration>,
    error: std::cell::RefCell<Option<ClientError>>,
}

impl Totals {
    fn new() -> Rc<Self> {
        Rc::new(Self {
            records: Cell::new(0),
            bytes: Cell::new(0),
            latency: std::cell::RefCell::new(spate::metrics::new_histogram()),
            elapsed: Cell::new(Duration::ZERO),
            error: std::cell::RefCell::new(None),
        })
    }

    fn add(&self, records: u64, bytes: u64, latency: Duration) {
        self.records.set(self.records.get() + records);
        self.bytes.set(self.bytes.get() + bytes);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.borrow_mut().saturating_record(ns);
    }

    fn report(&self, phase: &str, args: &Args) {
        let secs = self.elapsed.get().as_secs_f64().max(1e-9);
        let bytes = self.bytes.get() as f64;
        let h = self.latency.borrow();
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{phase}: {} records of {} B in {:.2} s = {:.0} records/s, {:.1} MB/s ({:.1} MiB/s)",
            self.records.get(),
            args.record_size,
            secs,
            self.records.get() as f64 / secs,
            bytes / secs / 1e6,
            bytes / secs / (1024.0 * 1024.0),
        );
        println!(
            "{phase}: request latency µs  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  p99.99 {:.0}  max {:.0}  ({} requests)",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            us(0.9999),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

fn payload_of(args: &Args, partition: u32) -> (BatchMeta, Bytes, u64) {
    let count = (args.batch_bytes / args.record_size.max(1)).max(1);
    let mut builder = BatchBuilder::default();
    let now = spate::now_ms();
    for i in 0..count {
        let value: Vec<u8> =
            (0..args.record_size).map(|j| (i * 31 + j * 7 + partition as usize) as u8).collect();
        builder.push(OwnedRecord {
            key: None,
            value: Some(value),
            headers: Vec::new(),
            timestamp: now,
        });
    }
    let (meta, payload) = builder.build();
    (meta, Bytes::from_owner(payload), count as u64)
}

async fn produce_phase(args: &Args, clients: &[Client]) -> Result<Rc<Totals>, String> {
    let totals = Totals::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_secs);
    let byte_budget = args.max_bytes.unwrap_or(u64::MAX);
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let (meta, payload, count) = payload_of(args, partition);
        let record_bytes = count * args.record_size as u64;
        for slot in 0..args.inflight.max(1) {
            let client = clients[(partition as usize + slot) % clients.len()].clone();
            let (topic, acks, totals, payload) =
                (args.topic.clone(), args.acks, totals.clone(), payload.clone());
            tasks.push(glommio::spawn_local(async move {
                while Instant::now() < deadline
                    && totals.bytes.get() < byte_budget
                    && totals.error.borrow().is_none()
                {
                    let sent = Instant::now();
                    match client
                        .produce_encoded(&topic, partition, acks, meta, payload.clone())
                        .await
                    {
                        Ok(_) => totals.add(count, record_bytes, sent.elapsed()),
                        Err(e) => {
                            totals.error.borrow_mut().get_or_insert(e);
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await;
    }
    totals.elapsed.set(started.elapsed());
    if let Some(e) = totals.error.borrow().clone() {
        return Err(format!("produce failed: {e}"));
    }
    Ok(totals)
}

async fn consume_phase(
    args: &Args,
    clients: &[Client],
    starts: &[u64],
) -> Result<Rc<Totals>, String> {
    // acks=0 batches may still be in flight on the broker: read up to where the log ends now.
    glommio::timer::sleep(Duration::from_millis(200)).await;
    let totals = Totals::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let client = clients[partition as usize % clients.len()].clone();
        let (topic, totals, fetch_bytes) = (args.topic.clone(), totals.clone(), args.fetch_bytes);
        let record_size = args.record_size as u64;
        let mut offset = starts[partition as usize];
        tasks.push(glommio::spawn_local(async move {
            let end = match client.list_offset(&topic, partition, OFFSET_LATEST).await {
                Ok(end) => end as u64,
                Err(e) => return Err(e.to_string()),
            };
            while offset < end {
                let sent = Instant::now();
                let fetched = client
                    .fetch(&topic, partition, offset, fetch_bytes, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut records = 0u64;
                let from = offset;
                for batch in fetched.batches().map_err(|e| e.to_string())? {
                    for record in batch.records().filter(|r| r.offset >= from) {
                        records += 1;
                        offset = record.offset + 1;
                    }
                }
                if records == 0 {
                    return Err(format!("partition {partition}: no progress at offset {offset}"));
                }
                totals.add(records, records * record_size, sent.elapsed());
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    totals.elapsed.set(started.elapsed());
    Ok(totals)
}
