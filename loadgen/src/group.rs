//! The consume phase as a consumer group (`--group`): `--consumers` members per loadgen thread
//! share the topic's partitions through the group's coordinator (native protocol; the client
//! finds it, and each partition's leader, from the broker given), committing as they go, until
//! every record of the run has been read by someone.
//!
//! The run's start offsets are committed for the group before it joins, so members begin at
//! this run's first record. A partition that moves between members in a rebalance may be read
//! twice from the last commit (at-least-once), so `--verify` does not apply here.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate::client::{Client, GroupConfig, GroupConsumer, Leaders, OffsetReset};

use crate::consume::Consumed;
use crate::report::Totals;
use crate::Args;

/// How long members keep polling without anyone making progress before the run fails.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Commits `starts` for the group, outside membership: members then begin at this run's data.
pub async fn start_group_at(args: &Args, group: &str, starts: &[u64]) -> Result<(), String> {
    let client = Client::connect(&args.address()).await.map_err(|e| e.to_string())?;
    let offsets: Vec<(String, u32, u64)> =
        starts.iter().enumerate().map(|(p, o)| (args.topic.clone(), p as u32, *o)).collect();
    let cluster = Leaders::new(client);
    let committed = cluster.with_coordinator(group, |coordinator| {
        let offsets = offsets.clone();
        async move { coordinator.commit_offsets(group, "", -1, offsets).await }
    });
    committed.await.map_err(|e| e.to_string())
}

/// Runs this thread's members until `consumed` (shared by every thread) covers everything
/// written since `starts`.
pub async fn run(
    args: Rc<Args>,
    group: String,
    starts: &[u64],
    consumed: Arc<AtomicU64>,
    measure_from: Instant,
) -> Result<Consumed, String> {
    let client = Client::connect(&args.address()).await.map_err(|e| e.to_string())?;
    let leaders = Leaders::new(client);
    let mut expected = 0;
    for (partition, start) in starts.iter().enumerate() {
        let latest = spate::native::messages::OFFSET_LATEST;
        let topic = &args.topic;
        let end = leaders.with_leader(topic, partition as u32, |leader| async move {
            leader.list_offset(topic, partition as u32, latest).await
        });
        let end = end.await.map_err(|e| e.to_string())?;
        expected += (end.max(0) as u64).saturating_sub(*start);
    }
    let totals = Rc::new(Totals::new(Arc::default()));
    totals.count_from(measure_from);
    let started = Instant::now();
    let mut members = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let client = Client::connect(&args.address()).await.map_err(|e| e.to_string())?;
        let mut config = GroupConfig::new(&group, &[args.topic.as_str()]);
        config.offset_reset = OffsetReset::Earliest;
        config.fetch_max_bytes = args.fetch_bytes;
        config.auto_commit = Some(Duration::from_millis(500));
        config.client_id = "spate-loadgen".into();
        let (totals, consumed) = (totals.clone(), consumed.clone());
        members.push(glommio::spawn_local(async move {
            let member = GroupConsumer::join(client, config).await.map_err(|e| e.to_string())?;
            let mut last_progress = Instant::now();
            while consumed.load(Ordering::Relaxed) < expected {
                let polled = Instant::now();
                let records =
                    member.poll(Duration::from_millis(50)).await.map_err(|e| e.to_string())?;
                if records.is_empty() {
                    if last_progress.elapsed() > STALL_LIMIT {
                        let generation = member.generation();
                        return Err(format!(
                            "group member at generation {generation}: no progress for {STALL_LIMIT:?}"
                        ));
                    }
                    continue;
                }
                last_progress = Instant::now();
                let bytes: u64 = records
                    .iter()
                    .map(|r| r.record.value.as_ref().map_or(0, Vec::len) as u64)
                    .sum();
                consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
                totals.add(records.len() as u64, bytes, polled.elapsed());
            }
            member.close().await.map_err(|e| e.to_string())
        }));
    }
    for member in members {
        member.await?;
    }
    totals.elapsed.set(started.max(measure_from).elapsed());
    let end_to_end = Rc::new(RefCell::new(spate::metrics::new_histogram()));
    Ok(Consumed { totals, end_to_end, checks: Vec::new() })
}
