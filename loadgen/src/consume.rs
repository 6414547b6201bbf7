//! Consumers: one per partition (`--readers` per partition, each on a connection of its own),
//! reading everything the producers wrote from where the run started, with every entry's
//! checksum and archive checked by the client.
//!
//! Catch-up (default) runs after the produce phase and reads the backlog from disk. Tailing
//! (`--tail`) runs beside the producers with long polls and measures end-to-end latency: from
//! the send time stamped in each record to the moment the consumer holds it. `--verify` checks
//! every record's sequence number either way.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::link::{Link, Routes};
use crate::report::Totals;
use crate::verify::{self, SequenceCheck};
use crate::Args;

/// How long a tailing fetch waits at the end of the log.
const TAIL_WAIT_MS: u32 = 100;

pub struct Consumed {
    pub totals: Rc<Totals>,
    /// Send to receipt, per record (only when records carry stamps).
    pub end_to_end: Rc<RefCell<Histogram<u64>>>,
    /// One per partition read, in the order given (the first reader's).
    pub checks: Vec<SequenceCheck>,
}

/// Reads `partitions` (this thread's share) from `starts`, once per reader (each with its own
/// `Routes`): until the current end when `producing_done` is `None`, else until the producers
/// are done and the end is reached.
pub async fn run(
    args: Rc<Args>,
    readers: Vec<Routes>,
    starts: Vec<u64>,
    producing_done: Option<Rc<Cell<bool>>>,
    partitions: Vec<u32>,
    measure_from: Instant,
) -> Result<Consumed, String> {
    let totals = Rc::new(Totals::new(std::sync::Arc::default()));
    totals.count_from(measure_from);
    let end_to_end = Rc::new(RefCell::new(spate::metrics::new_histogram()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for clients in &readers {
        for (index, &partition) in partitions.iter().enumerate() {
            let reader = PartitionReader {
                client: clients.pool(partition)?.link(index),
                args: args.clone(),
                partition,
                totals: totals.clone(),
                end_to_end: end_to_end.clone(),
                producing_done: producing_done.clone(),
            };
            tasks.push(glommio::spawn_local(reader.run(starts[partition as usize])));
        }
    }
    let mut checks = Vec::new();
    for task in tasks {
        checks.push(task.await?);
    }
    checks.truncate(partitions.len());
    totals.elapsed.set(started.max(measure_from).elapsed());
    Ok(Consumed { totals, end_to_end, checks })
}

struct PartitionReader {
    client: Link,
    args: Rc<Args>,
    partition: u32,
    totals: Rc<Totals>,
    end_to_end: Rc<RefCell<Histogram<u64>>>,
    producing_done: Option<Rc<Cell<bool>>>,
}

impl PartitionReader {
    async fn run(self, start: u64) -> Result<SequenceCheck, String> {
        let mut check = SequenceCheck::default();
        let mut offset = start;
        let mut end = match self.producing_done {
            Some(_) => None,
            None => Some(self.latest().await?),
        };
        let wait_ms = if self.producing_done.is_some() { TAIL_WAIT_MS } else { 0 };
        loop {
            if end.is_none() && self.producing_done.as_ref().is_some_and(|d| d.get()) {
                // Producers are done: from now on, read up to what the log holds.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                end = Some(self.latest().await?);
            }
            if end.is_some_and(|end| offset >= end) {
                return Ok(check);
            }
            let sent = Instant::now();
            let mut received_ns = None;
            let mut bytes = 0u64;
            let mut next = offset;
            let visit = |record_offset: u64, value: &[u8]| {
                let received_ns = *received_ns.get_or_insert_with(verify::now_ns);
                bytes += value.len() as u64;
                if self.args.verify {
                    check.observe(verify::seq_of(value));
                }
                if self.args.stamped() && self.totals.counting() {
                    if let Some(sent_ns) = verify::sent_ns_of(value) {
                        let latency = received_ns.saturating_sub(sent_ns).max(1);
                        self.end_to_end.borrow_mut().saturating_record(latency);
                    }
                }
                next = record_offset + 1;
            };
            let (topic, fetch_bytes) = (&self.args.topic, self.args.fetch_bytes);
            let records = self
                .client
                .fetch(topic, self.partition, offset, fetch_bytes, wait_ms, visit)
                .await
                .map_err(|e| format!("partition {}: {e}", self.partition))?;
            offset = next;
            if records > 0 {
                self.totals.add(records, bytes, sent.elapsed());
            } else if end.is_some() && self.producing_done.is_none() {
                return Err(format!(
                    "partition {}: no progress at offset {offset}",
                    self.partition
                ));
            }
        }
    }

    async fn latest(&self) -> Result<u64, String> {
        self.client.latest(&self.args.topic, self.partition).await
    }
}
