//! The partition layer over a real log: what readers see of it, and what producers wait for.

use std::rc::Rc;
use std::time::Duration;

use super::{Acks, Partition, ReplicaView};
use crate::log::partition::tests::{entry, in_partition_dir, open, payload};
use crate::log::LogError;
use crate::types::Offset;

const SEGMENT_BYTES: u64 = 1024 * 1024;

#[test]
fn the_high_watermark_follows_what_the_log_has_written() {
    in_partition_dir(|dir| async move {
        let partition = Partition::new(open(&dir, SEGMENT_BYTES).await);
        assert_eq!(partition.high_watermark(), Offset(0));
        let appended = partition.append(entry(3, &payload(0, 100))).expect("append");
        // Appended, not yet written: not visible, yet its offsets are inside the log, so a
        // consumer there waits instead of being told it is out of range.
        assert!(partition.high_watermark() < appended.next_offset);
        let inside = Offset(appended.next_offset.0 - 1);
        let read = partition.read(inside, 1 << 20).await.expect("in range");
        assert!(read.entries.is_empty(), "nothing is visible before it is written");
        assert_eq!(read.high_watermark, partition.high_watermark());
        partition.wait_acked(&appended, Acks::Leader).await.expect("written");
        assert_eq!(partition.high_watermark(), Offset(3));
        let read = partition.read(Offset(0), 1 << 20).await.expect("read");
        assert_eq!(
            (read.entries.len(), read.high_watermark, read.log_start),
            (1, Offset(3), Offset(0))
        );
        // Past the log end is out of range.
        let past = partition.read(Offset(4), 1 << 20).await;
        assert!(
            matches!(past, Err(LogError::OffsetOutOfRange { log_end: Offset(3), .. })),
            "{past:?}"
        );
        partition.log().close().await;
    });
}

#[test]
fn acks_all_answers_after_the_fdatasync_and_acks_zero_after_room() {
    in_partition_dir(|dir| async move {
        let partition = Partition::new(open(&dir, SEGMENT_BYTES).await);
        let first = partition.append(entry(1, &payload(0, 100))).expect("append");
        partition.wait_acked(&first, Acks::None).await.expect("room");
        let second = partition.append(entry(1, &payload(1, 100))).expect("append");
        partition.wait_acked(&second, Acks::All).await.expect("synced");
        // Durable means written too, and so visible.
        assert_eq!(partition.high_watermark(), second.next_offset);
        partition.log().close().await;
        // What acks=all answered survives a reopen.
        let reopened = Partition::new(open(&dir, SEGMENT_BYTES).await);
        assert_eq!(reopened.high_watermark(), second.next_offset);
        reopened.log().close().await;
    });
}

#[test]
fn a_long_poll_wakes_when_data_becomes_visible_and_times_out_otherwise() {
    in_partition_dir(|dir| async move {
        let partition = Rc::new(Partition::new(open(&dir, SEGMENT_BYTES).await));
        let idle = partition.wait_for_data(Offset(0), Duration::from_millis(20)).await;
        assert!(!idle, "nothing appended: the poll times out");
        let poll = {
            let partition = partition.clone();
            glommio::spawn_local(async move {
                partition.wait_for_data(Offset(0), Duration::from_secs(60)).await
            })
        };
        let appended = partition.append(entry(1, &payload(0, 10))).expect("append");
        assert!(poll.await, "woken by the write");
        partition.wait_acked(&appended, Acks::Leader).await.expect("written");
        partition.log().close().await;
    });
}

/// A replica's truncation cuts the log below the high watermark: the high watermark comes down
/// to the new log end (as Kafka lowers a follower's), and then follows what is written again.
#[test]
fn a_truncation_lowers_the_high_watermark_to_the_new_log_end() {
    in_partition_dir(|dir| async move {
        let partition = Partition::new(open(&dir, SEGMENT_BYTES).await);
        for i in 0..3 {
            let appended = partition.append(entry(1, &payload(i, 100))).expect("append");
            partition.wait_acked(&appended, Acks::Leader).await.expect("written");
        }
        assert_eq!(partition.high_watermark(), Offset(3));
        let new_end = partition.log().truncate_to(Offset(1)).await.expect("truncated");
        assert_eq!((new_end, partition.high_watermark()), (Offset(1), Offset(1)));
        let past = partition.read(Offset(2), 1 << 20).await;
        assert!(matches!(past, Err(LogError::OffsetOutOfRange { .. })), "{past:?}");
        let appended = partition.append(entry(1, &payload(9, 100))).expect("append");
        partition.wait_acked(&appended, Acks::Leader).await.expect("written");
        assert_eq!(partition.high_watermark(), Offset(2));
        partition.log().close().await;
    });
}

/// Leader and follower over two real logs: `acks=all` is answered once the in-sync follower's
/// fetch reports the entry synced, not before; the follower's high watermark follows what its
/// leader says; a follower past the leader's epoch end is told where the logs part; an in-sync
/// set below `min.insync.replicas` refuses `acks=all` before the append.
#[test]
fn a_replicated_leader_answers_acks_all_once_its_in_sync_follower_has_synced() {
    use crate::error::ErrorKind;
    use crate::replication::divergence::EpochEnd;
    use crate::types::{LeaderEpoch, NodeId};
    in_partition_dir(|dir| async move {
        let follower_dir = dir.with_file_name("t-follower");
        std::fs::create_dir(&follower_dir).expect("follower dir");
        let leader = Rc::new(Partition::new(open(&dir, SEGMENT_BYTES).await));
        let follower = Partition::new(open(&follower_dir, SEGMENT_BYTES).await);
        let view = leader_of_two();
        leader.lead(LeaderEpoch(3), &view).await.expect("lead");
        follower.follow();
        let appended = leader.append(entry(2, &payload(0, 100))).expect("append");
        let acked = {
            let leader = leader.clone();
            glommio::spawn_local(async move {
                let appended = appended;
                leader.wait_acked(&appended, Acks::All).await
            })
        };
        leader.log().wait_written_past(Offset(0)).await.expect("written");
        // The follower's first fetch: nothing of its own yet, the entry comes back.
        let fetched = leader.serve_follower(NodeId(2), (Offset(0), Offset(0)), None, 1 << 20);
        let fetched = fetched.await.expect("served");
        assert_eq!((fetched.entries.len(), fetched.high_watermark), (1, Offset(0)));
        let early = futures_lite::future::or(async { Some(acked.await) }, async {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            None
        });
        let acked = match early.await {
            Some(answer) => panic!("acks=all answered before the follower had it: {answer:?}"),
            None => leader.clone(),
        };
        for stored in fetched.entries {
            let appended =
                follower.append_replicated(stored.into()).expect("the follower's append");
            follower.log().wait_synced(&appended).await.expect("synced");
        }
        // Its next fetch reports the entry synced: the high watermark passes it.
        let at = (follower.log().log_end(), follower.log().synced_offset());
        let fetched = acked.serve_follower(NodeId(2), at, Some(LeaderEpoch(3)), 1 << 20).await;
        let fetched = fetched.expect("served");
        assert_eq!((fetched.entries.len(), fetched.high_watermark), (0, Offset(2)));
        let second = leader.append(entry(1, &payload(1, 10))).expect("append");
        follower.followed_to(fetched.high_watermark);
        assert_eq!(follower.high_watermark(), Offset(2));
        // A follower whose log runs past where the leader's epoch 3 ends parts there.
        let diverged =
            leader.serve_follower(NodeId(2), (Offset(9), Offset(9)), Some(LeaderEpoch(3)), 1 << 20);
        let diverged = diverged.await.expect("served");
        let expected = EpochEnd { epoch: LeaderEpoch(3), end_offset: Offset(3) };
        assert_eq!((diverged.diverging, diverged.entries.len()), (Some(expected), 0));
        // The follower falls out of the in-sync set: acks=all is refused before appending, and
        // one waiting already fails rather than wait for a set that cannot confirm it.
        leader.update_replicas(&ReplicaView { isr: vec![NodeId(1)], partition_epoch: 1, ..view });
        let refused = leader.check_acks_all().expect_err("one in sync of two");
        assert_eq!(refused.kind, ErrorKind::NotEnoughReplicas, "{refused}");
        let after = leader.wait_acked(&second, Acks::All).await.expect_err("shrunk below");
        assert_eq!(after.kind, ErrorKind::NotEnoughReplicasAfterAppend, "{after}");
        leader.log().close().await;
        follower.log().close().await;
    });
}

/// A replica reopened after a crash recovers entries the replicas may never have agreed on: its
/// first role, even leader, shows none of them until its in-sync followers report them synced.
#[test]
fn a_reopened_replica_shows_nothing_recovered_until_its_followers_have_it() {
    use crate::types::{LeaderEpoch, NodeId};
    in_partition_dir(|dir| async move {
        let partition = Partition::new(open(&dir, SEGMENT_BYTES).await);
        for i in 0..3 {
            let appended = partition.append(entry(1, &payload(i, 100))).expect("append");
            partition.wait_acked(&appended, Acks::All).await.expect("synced");
        }
        partition.log().close().await;
        let reopened = Partition::new(open(&dir, SEGMENT_BYTES).await);
        let view = leader_of_two();
        reopened.lead(LeaderEpoch(1), &view).await.expect("lead");
        assert_eq!(reopened.high_watermark(), Offset(0), "nothing agreed on yet");
        let fetched = reopened.serve_follower(NodeId(2), (Offset(3), Offset(3)), None, 1 << 20);
        assert_eq!(fetched.await.expect("served").high_watermark, Offset(3));
        reopened.log().close().await;
    });
}

/// Broker 1's view of a partition it leads with broker 2, both in sync, two needed.
fn leader_of_two() -> ReplicaView {
    use crate::types::NodeId;
    ReplicaView {
        me: NodeId(1),
        replicas: vec![NodeId(1), NodeId(2)],
        isr: vec![NodeId(1), NodeId(2)],
        partition_epoch: 0,
        min_insync: 2,
        lag_max: Duration::from_secs(30),
    }
}
