//! The broker-wide count of produced bytes appended but not yet written, and the limit past
//! which connections stop reading requests (`queued.max.request.bytes`).
//!
//! Every partition already stops acks=0 producers at its own staged limit, and acks=1/all
//! requests wait for their write; but with many partitions and connections those bounds add up.
//! This one does not: when producers outrun the disk, the backlog stays under the limit (plus at
//! most one request per connection being read) and the waiting shows up as produce latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often a connection held back by the limit looks again. Only overloaded brokers wait, and
/// the disk drains the backlog at well under a byte per nanosecond, so polling costs nothing
/// that matters and needs no wake-ups across shards.
const RECHECK_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct QueuedBytes {
    bytes: AtomicUsize,
    max: usize,
}

impl QueuedBytes {
    pub fn new(max: usize) -> Self {
        Self { bytes: AtomicUsize::new(0), max }
    }

    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn remove(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The bound producers wait at (`queued.max.request.bytes`).
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn current(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits while the backlog is over the limit: a connection calls it before reading its next
    /// request.
    pub async fn wait_below_limit(&self) {
        while self.current() > self.max {
            glommio::timer::sleep(RECHECK_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_waits_only_when_over() {
        let queued = QueuedBytes::new(100);
        queued.add(80);
        queued.add(30);
        assert_eq!(queued.current(), 110);
        queued.remove(30);
        assert_eq!(queued.current(), 80);
        let waited = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async { futures_lite::future::poll_once(queued.wait_below_limit()).await });
        assert!(waited.is_some(), "under the limit, nothing waits");
    }
}
