//! The partition layer over a real log: what readers see of it, and what producers wait for.

use std::rc::Rc;
use std::time::Duration;

use super::{Acks, Partition};
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
