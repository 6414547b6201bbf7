//! `spate produce` and `spate consume`: Kafka's console producer and consumer, for Spate.

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use event_listener::Event;

use crate::cli::topic::connect;
use crate::cli::{run_client, BrokerAddress};
use crate::client::producer::Delivery;
use crate::client::{Client, Leaders, Producer, ProducerConfig};
use crate::native::messages::{Acks, OFFSET_EARLIEST, OFFSET_LATEST};
use crate::record::batch::RecordView;
use crate::record::OwnedRecord;

/// Lines the stdin reader thread may queue ahead of the producer.
const LINE_QUEUE_MAX: usize = 8192;
/// How long a consumer's fetch waits at the end of a partition.
const FETCH_WAIT_MS: u32 = 500;
const FETCH_BYTES: u32 = 4 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first occurrence of this into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// 0 (no response), 1 (written by the broker) or all (fdatasync'ed).
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Send every record to this partition instead of choosing by key.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[command(flatten)]
    pub broker: BrokerAddress,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Start at the earliest offset instead of the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition")]
    pub offset: Option<u64>,
    /// Read only this partition.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Exit after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Exit when no record arrives for this long.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Output per record: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp
    /// (ms), %h headers (k=v,...), \n, \t. A newline ends each record.
    #[arg(long, default_value = "%v")]
    pub format: String,
    #[command(flatten)]
    pub broker: BrokerAddress,
}

impl ProduceArgs {
    pub fn run(self) -> Result<(), String> {
        let lines = spawn_stdin_reader();
        run_client(|| async move {
            let client = connect(&self.broker).await?;
            let config = ProducerConfig {
                acks: self.acks,
                linger: Duration::from_millis(self.linger_ms),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(client, config);
            let (deliveries, checker) = delivery_checker();
            let mut sent = 0u64;
            while let Some(line) = next_line(&lines).await {
                let record = self.record_of(line);
                let delivery = match self.partition {
                    Some(p) => producer.send_to(&self.topic, p, record).await,
                    None => producer.send(&self.topic, record).await,
                }
                .map_err(|e| e.to_string())?;
                sent += 1;
                if deliveries.send(delivery).await.is_err() {
                    break;
                }
            }
            producer.flush().await;
            drop(deliveries);
            let failed = checker.await.unwrap_or(0);
            if failed > 0 {
                return Err(format!("{failed} of {sent} records were not acknowledged"));
            }
            Ok(())
        })
    }

    fn record_of(&self, line: String) -> OwnedRecord {
        let (key, value) = match self.key_separator.as_deref().and_then(|sep| line.split_once(sep))
        {
            Some((key, value)) => (Some(key.as_bytes().to_vec()), value.as_bytes().to_vec()),
            None => (None, line.into_bytes()),
        };
        OwnedRecord { key, value: Some(value), headers: Vec::new(), timestamp: crate::now_ms() }
    }
}

/// A thread that reads stdin lines, so a slow or interactive stdin never blocks the executor.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (lines, receiver) = mpsc::sync_channel(LINE_QUEUE_MAX);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

async fn next_line(lines: &mpsc::Receiver<String>) -> Option<String> {
    loop {
        match lines.try_recv() {
            Ok(line) => return Some(line),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A task that awaits deliveries in order and counts failures, reporting the first.
fn delivery_checker(
) -> (glommio::channels::local_channel::LocalSender<Delivery>, glommio::task::JoinHandle<u64>) {
    let (sender, receiver) = glommio::channels::local_channel::new_bounded::<Delivery>(65_536);
    let checker = glommio::spawn_local(async move {
        let mut failed = 0u64;
        while let Some(delivery) = receiver.recv().await {
            let outcome = delivery.await.unwrap_or_else(|_| {
                Err(crate::client::ClientError::Disconnected("producer dropped".into()))
            });
            if let Err(e) = outcome {
                if failed == 0 {
                    eprintln!("produce failed: {e}");
                }
                failed += 1;
            }
        }
        failed
    })
    .detach();
    (sender, checker)
}

impl ConsumeArgs {
    pub fn run(self) -> Result<(), String> {
        run_client(|| async move {
            let client = connect(&self.broker).await?;
            // Each partition is read from its leader, wherever in the cluster.
            let leaders = Rc::new(Leaders::new(client.clone()));
            let partitions: Vec<u32> = match self.partition {
                Some(p) => vec![p],
                None => {
                    let topic =
                        client.describe_topic(&self.topic).await.map_err(|e| e.to_string())?;
                    topic.partitions.iter().map(|p| p.partition).collect()
                }
            };
            let progress = Rc::new(Progress::default());
            let format = Rc::new(self.format.clone());
            for partition in partitions {
                let start = match (self.offset, self.from_beginning) {
                    (Some(offset), _) => offset,
                    (None, true) => {
                        first_offset(&leaders, &self.topic, partition, OFFSET_EARLIEST).await?
                    }
                    (None, false) => {
                        first_offset(&leaders, &self.topic, partition, OFFSET_LATEST).await?
                    }
                };
                let job = PartitionReader {
                    leaders: leaders.clone(),
                    topic: self.topic.clone(),
                    partition,
                    format: format.clone(),
                    progress: progress.clone(),
                    limit: self.count,
                };
                glommio::spawn_local(job.run(start)).detach();
            }
            progress.wait(self.count, self.timeout_ms.map(Duration::from_millis)).await
        })
    }
}

async fn first_offset(
    leaders: &Leaders,
    topic: &str,
    partition: u32,
    which: i64,
) -> Result<u64, String> {
    let ask = |client: Client| async move { client.list_offset(topic, partition, which).await };
    let offset = leaders.with_leader(topic, partition, ask).await.map_err(|e| e.to_string())?;
    u64::try_from(offset).map_err(|_| format!("no offset for partition {partition}"))
}

/// Records printed so far, shared by the per-partition readers.
#[derive(Default)]
struct Progress {
    printed: Cell<u64>,
    last_record: Cell<Option<Instant>>,
    failure: std::cell::RefCell<Option<String>>,
    changed: Event,
}

impl Progress {
    fn done(&self, limit: Option<u64>) -> bool {
        limit.is_some_and(|l| self.printed.get() >= l) || self.failure.borrow().is_some()
    }

    async fn wait(&self, limit: Option<u64>, idle: Option<Duration>) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(why) = self.failure.borrow().clone() {
                return Err(why);
            }
            if self.done(limit) {
                return Ok(());
            }
            if let Some(idle) = idle {
                let since = self.last_record.get().unwrap_or(started);
                if since.elapsed() >= idle {
                    return Ok(());
                }
            }
            let listener = self.changed.listen();
            let tick = glommio::timer::sleep(Duration::from_millis(50));
            futures_lite::future::or(listener, tick).await;
        }
    }
}

struct PartitionReader {
    leaders: Rc<Leaders>,
    topic: String,
    partition: u32,
    format: Rc<String>,
    progress: Rc<Progress>,
    limit: Option<u64>,
}

impl PartitionReader {
    async fn run(self, mut offset: u64) {
        while !self.progress.done(self.limit) {
            let (topic, partition) = (self.topic.as_str(), self.partition);
            let fetch = |client: Client| async move {
                client.fetch(topic, partition, offset, FETCH_BYTES, FETCH_WAIT_MS).await
            };
            let fetched = match self.leaders.with_leader(topic, partition, fetch).await {
                Ok(fetched) => fetched,
                Err(e) => {
                    self.progress
                        .failure
                        .borrow_mut()
                        .get_or_insert(format!("partition {}: {e}", self.partition));
                    self.progress.changed.notify(usize::MAX);
                    return;
                }
            };
            let batches = match fetched.batches() {
                Ok(batches) => batches,
                Err(e) => {
                    self.progress.failure.borrow_mut().get_or_insert(e.to_string());
                    self.progress.changed.notify(usize::MAX);
                    return;
                }
            };
            let mut out = String::new();
            let start = offset;
            for record in batches.iter().flat_map(|b| b.records()).filter(|r| r.offset >= start) {
                if self.progress.done(self.limit) {
                    break;
                }
                format_record(&mut out, &self.format, &self.topic, self.partition, &record);
                out.push('\n');
                offset = record.offset + 1;
                self.progress.printed.set(self.progress.printed.get() + 1);
            }
            if !out.is_empty() {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(out.as_bytes()).and_then(|_| stdout.flush());
                self.progress.last_record.set(Some(Instant::now()));
                self.progress.changed.notify(usize::MAX);
            }
        }
    }
}

fn format_record(
    out: &mut String,
    format: &str,
    topic: &str,
    partition: u32,
    record: &RecordView<'_>,
) {
    let text = |bytes: Option<&[u8]>| {
        bytes.map_or_else(|| "null".to_string(), |b| String::from_utf8_lossy(b).into_owned())
    };
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('%', Some(spec)) | ('\\', Some(spec @ ('n' | 't'))) => {
                chars.next();
                match (c, spec) {
                    ('%', 't') => out.push_str(topic),
                    ('%', 'p') => out.push_str(&partition.to_string()),
                    ('%', 'o') => out.push_str(&record.offset.to_string()),
                    ('%', 'k') => out.push_str(&text(record.key())),
                    ('%', 'v') => out.push_str(&text(record.value())),
                    ('%', 'T') => out.push_str(&record.timestamp.to_string()),
                    ('%', 'h') => {
                        let headers: Vec<String> = record
                            .headers()
                            .map(|(k, v)| {
                                format!(
                                    "{}={}",
                                    String::from_utf8_lossy(k),
                                    String::from_utf8_lossy(v)
                                )
                            })
                            .collect();
                        out.push_str(&headers.join(","));
                    }
                    ('\\', 'n') => out.push('\n'),
                    ('\\', 't') => out.push('\t'),
                    (_, other) => {
                        out.push(c);
                        out.push(other);
                    }
                }
            }
            _ => out.push(c),
        }
    }
}
