//! The consume phase: read everything the produce phase wrote, from where it started, with every
//! entry's checksum and archive checked by the client and, with `--verify`, every sequence.

use std::rc::Rc;
use std::time::{Duration, Instant};

use spate::client::Client;
use spate::native::messages::OFFSET_LATEST;

use crate::report::Totals;
use crate::verify::{self, SequenceCheck};
use crate::Args;

pub async fn run(
    args: &Args,
    clients: &[Client],
    starts: &[u64],
) -> Result<(Rc<Totals>, Vec<SequenceCheck>), String> {
    // acks=0 batches may still be on their way to the log: read up to where it ends now.
    glommio::timer::sleep(Duration::from_millis(200)).await;
    let totals = Rc::new(Totals::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let client = clients[partition as usize % clients.len()].clone();
        let (topic, totals, fetch_bytes) = (args.topic.clone(), totals.clone(), args.fetch_bytes);
        let (record_size, verify) = (args.record_size as u64, args.verify);
        let start = starts[partition as usize];
        tasks.push(glommio::spawn_local(async move {
            let end = client
                .list_offset(&topic, partition, OFFSET_LATEST)
                .await
                .map_err(|e| e.to_string())?;
            let mut check = SequenceCheck::default();
            let mut offset = start;
            while offset < end as u64 {
                let sent = Instant::now();
                let fetched = client
                    .fetch(&topic, partition, offset, fetch_bytes, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut records = 0u64;
                let from = offset;
                for batch in fetched.batches().map_err(|e| e.to_string())? {
                    for record in batch.records().filter(|r| r.offset >= from) {
                        if verify {
                            check.observe(record.value().and_then(verify::seq_of));
                        }
                        records += 1;
                        offset = record.offset + 1;
                    }
                }
                if records == 0 {
                    return Err(format!("partition {partition}: no progress at offset {offset}"));
                }
                totals.add(records, records * record_size, sent.elapsed());
            }
            Ok(check)
        }));
    }
    let mut checks = Vec::new();
    for task in tasks {
        checks.push(task.await?);
    }
    totals.elapsed.set(started.elapsed());
    Ok((totals, checks))
}
