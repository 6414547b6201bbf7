//! The produce phase: batches per partition, several in flight, for a duration or a byte count.
//!
//! Without `--verify`, each partition's batch is archived once and re-sent, so the generator's
//! CPU goes to the wire rather than to encoding. With `--verify`, every batch is built fresh with
//! each record stamped with its partition's next sequence number, and all of a partition's
//! requests share one connection so their order on the wire is their sequence order.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate::client::Client;
use spate::record::{BatchBuilder, BatchMeta, OwnedRecord};

use crate::report::Totals;
use crate::verify;
use crate::Args;

/// One partition's sequence numbers in verify mode.
#[derive(Default)]
pub struct PartitionSequence {
    next: Cell<u64>,
    /// Records acknowledged so far; acknowledgements arrive in sequence order.
    pub acknowledged: Cell<u64>,
}

pub async fn run(args: &Args, clients: &[Client]) -> (Rc<Totals>, Vec<Rc<PartitionSequence>>) {
    let totals = Rc::new(Totals::new());
    let sequences: Vec<_> =
        (0..args.partitions).map(|_| Rc::new(PartitionSequence::default())).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_secs);
    let byte_budget = args.max_bytes.unwrap_or(u64::MAX);
    let records_per_batch = (args.batch_bytes / args.record_size.max(1)).max(1) as u64;
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let prebuilt = (!args.verify).then(|| batch(args, partition, records_per_batch));
        for slot in 0..args.inflight.max(1) {
            let connection =
                if args.verify { partition as usize } else { partition as usize + slot };
            let client = clients[connection % clients.len()].clone();
            let (topic, acks, record_size) =
                (args.topic.clone(), args.acks, args.record_size as u64);
            let (totals, sequence, prebuilt) =
                (totals.clone(), sequences[partition as usize].clone(), prebuilt.clone());
            let args_batch = (args.record_size, records_per_batch);
            tasks.push(glommio::spawn_local(async move {
                while Instant::now() < deadline
                    && totals.bytes.get() < byte_budget
                    && !totals.failed()
                {
                    let (meta, payload) = match &prebuilt {
                        Some(prebuilt) => prebuilt.clone(),
                        None => {
                            let first = sequence.next.get();
                            sequence.next.set(first + args_batch.1);
                            stamped_batch(args_batch.0, args_batch.1, first)
                        }
                    };
                    let count = u64::from(meta.record_count);
                    let sent = Instant::now();
                    match client.produce_encoded(&topic, partition, acks, meta, payload).await {
                        Ok(_) => {
                            totals.add(count, count * record_size, sent.elapsed());
                            let acknowledged = sequence.acknowledged.get() + count;
                            sequence.acknowledged.set(acknowledged);
                        }
                        Err(e) => totals.fail(e),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await;
    }
    totals.elapsed.set(started.elapsed());
    (totals, sequences)
}

/// A batch of `count` records of `record_size` bytes, archived once and re-sent.
fn batch(args: &Args, partition: u32, count: u64) -> (BatchMeta, Bytes) {
    let mut builder = BatchBuilder::default();
    let now = spate::now_ms();
    for i in 0..count as usize {
        let value =
            (0..args.record_size).map(|j| (i * 31 + j * 7 + partition as usize) as u8).collect();
        builder.push(OwnedRecord {
            key: None,
            value: Some(value),
            headers: Vec::new(),
            timestamp: now,
        });
    }
    let (meta, payload) = builder.build();
    (meta, Bytes::from_owner(payload))
}

/// A batch whose records carry the sequence numbers `first_seq..first_seq + count`.
fn stamped_batch(record_size: usize, count: u64, first_seq: u64) -> (BatchMeta, Bytes) {
    let mut builder = BatchBuilder::default();
    let now = spate::now_ms();
    let sent_ns = u64::try_from(now).unwrap_or(0).saturating_mul(1_000_000);
    for seq in first_seq..first_seq + count {
        let mut value = vec![0u8; record_size.max(verify::STAMP_BYTES)];
        verify::stamp(&mut value, seq, sent_ns);
        builder.push(OwnedRecord {
            key: None,
            value: Some(value),
            headers: Vec::new(),
            timestamp: now,
        });
    }
    let (meta, payload) = builder.build();
    (meta, Bytes::from_owner(payload))
}
