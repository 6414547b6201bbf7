//! Consumer groups through the native protocol, with the Rust client's `GroupConsumer`, against
//! the real binary: members share partitions, a leaving member's partitions move, committed
//! offsets carry a new member on, and native and Kafka groups look alike to `spate group`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{connect, produce, record, run, Broker};
use spate::client::{Assignor, ClientError, GroupConfig, GroupConsumer, OffsetReset};
use spate::native::messages::{Acks, ErrorCode};

const TOPIC: &str = "shared";
const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 50;

fn config(assignor: Assignor) -> GroupConfig {
    let mut config = GroupConfig::new("native-readers", &[TOPIC]);
    config.assignor = assignor;
    config.offset_reset = OffsetReset::Earliest;
    config.auto_commit = None;
    config.session_timeout = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_millis(200);
    config
}

/// Polls until `want` records arrived or 20 s passed; returns (partition, offset) pairs.
async fn read(consumer: &GroupConsumer, want: usize) -> Vec<(u32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < want && Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(50)).await.expect("poll") {
            seen.push((r.partition, r.offset));
        }
    }
    seen
}

#[test]
fn members_share_partitions_and_a_leavers_partitions_move_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "group.initial.rebalance.delay.ms=0"]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        for p in 0..PARTITIONS {
            produce(
                &client,
                TOPIC,
                p,
                Acks::All,
                (0..PER_PARTITION).map(|s| record(p, s)).collect(),
            )
            .await;
        }
        let first = GroupConsumer::join(connect(&broker).await, config(Assignor::RoundRobin))
            .await
            .expect("first member joins");
        // The second member's join starts a rebalance: the first learns of it by heartbeat
        // and rejoins on its next poll, while the second waits in its join.
        let second_joining = glommio::spawn_local({
            let client = connect(&broker).await;
            async move { GroupConsumer::join(client, config(Assignor::RoundRobin)).await }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while first.assignment().len() != 2 && Instant::now() < deadline {
            first.poll(Duration::from_millis(50)).await.expect("poll while rebalancing");
        }
        let second = second_joining.await.expect("second member joins");
        let (a, b) = (first.assignment(), second.assignment());
        assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
        let all: BTreeSet<_> = a.iter().chain(&b).cloned().collect();
        assert_eq!(all.len(), PARTITIONS as usize);

        // The second reads and commits its share, then leaves; the first takes everything
        // and starts the second's partitions at the committed offsets.
        let read_by_second = read(&second, 2 * PER_PARTITION as usize).await;
        assert_eq!(read_by_second.len(), 2 * PER_PARTITION as usize);
        second.commit().await.expect("commit");
        second.close().await.expect("leave");
        let rest = read(&first, 2 * PER_PARTITION as usize).await;
        assert_eq!(first.assignment().len(), PARTITIONS as usize);
        let taken_over: BTreeSet<u32> = b.iter().map(|(_, p)| *p).collect();
        assert!(
            rest.iter().all(|(p, _)| !taken_over.contains(p)),
            "records of the leaver's partitions were read again: {rest:?}"
        );
        first.commit().await.expect("commit");

        let described = client.describe_group("native-readers").await.expect("describe");
        assert_eq!(described.state, "Stable");
        assert_eq!(described.members.len(), 1);
        assert_eq!(described.members[0].assignment, vec![(TOPIC.to_string(), vec![0, 1, 2, 3])]);
        assert!(described.offsets.iter().all(|o| o.committed == PER_PARTITION as i64));
        let refused = client.delete_group("native-readers").await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::NonEmptyGroup));
        first.close().await.expect("leave");
        client.delete_group("native-readers").await.expect("delete an empty group");
        let gone = client.describe_group("native-readers").await.unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::UnknownGroup));
    });
}

/// Runs a group request again while the coordinator is not ready: before it leads the group's
/// offsets partition after a start (NOT_COORDINATOR), and while it replays it (the native
/// protocol's COORDINATOR_NOT_AVAILABLE, as for Kafka's COORDINATOR_LOAD_IN_PROGRESS), for up
/// to 10 s: a raw connection has no client to retry for it.
async fn while_coordinator_loads<T, F, Fut>(request: F) -> Result<T, ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match request().await {
            Err(e)
                if [Some(ErrorCode::CoordinatorNotAvailable), Some(ErrorCode::NotCoordinator)]
                    .contains(&e.code())
                    && Instant::now() < deadline =>
            {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            outcome => return outcome,
        }
    }
}

#[test]
fn the_offsets_log_is_compacted_and_keeps_the_latest_commits_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &["--set", "offsets.topic.segment.bytes=16384"]);
    let group = "compacted";
    let partition = spate::group::offsets::partition_for(group);
    let segments_dir = data.join("__consumer_offsets").join(partition.to_string());
    let log_files = || {
        std::fs::read_dir(&segments_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .count()
            })
            .unwrap_or(0)
    };
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        // As clients do: the coordinator is found (the offsets topic created) first.
        client.find_coordinator(group).await.expect("find the coordinator");
        for round in 0..400u64 {
            let offsets: Vec<_> = (0..PARTITIONS)
                .map(|p| (TOPIC.to_string(), p, round * 10 + u64::from(p)))
                .collect();
            let commit = || client.commit_offsets(group, "", -1, offsets.clone());
            while_coordinator_loads(commit).await.expect("commit");
        }
    });
    let written = log_files();
    assert!(written >= 4, "commits should span several 16 KiB segments, found {written}");
    // Compaction runs every 5 s on the coordinator: a snapshot, then the old segments go.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_files() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(log_files() <= 2, "{written} segments before, {} after", log_files());
    broker.kill9();
    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        let wanted: Vec<_> = (0..PARTITIONS).map(|p| (TOPIC.to_string(), p)).collect();
        let fetch = || client.fetch_offsets(group, wanted.clone());
        let offsets = while_coordinator_loads(fetch).await.expect("fetch offsets");
        let expected: Vec<_> =
            (0..PARTITIONS).map(|p| (TOPIC.to_string(), p, 3990 + i64::from(p))).collect();
        assert_eq!(offsets, expected);
    });
}
