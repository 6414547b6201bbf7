//! A broker that is not a controller voter follows the metadata log: it asks the voters for the
//! committed entries after the last it applied (KRaft's observers do the same with Fetch) and
//! applies them to an image of its own, so it knows the cluster as the voters do.
//!
//! Any voter may answer, with what it has applied: a voter that lags answers a prefix, which
//! the follower applies and continues from. Entries a voter holds only in its snapshot come as
//! the snapshot, which replaces the follower's image. The follower keeps its image in memory and
//! follows the log from the voters' snapshot after a restart.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use super::applied::AppliedMetadata;
use super::metadata::MetadataImage;
use super::node::{status_of, ClusterStatus, Links};
use crate::types::NodeId;

/// How often a follower that is caught up asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long it waits after no voter answered.
const RETRY_WAIT: Duration = Duration::from_millis(500);

/// Why a fetch gave nothing to apply.
enum Fetched {
    /// Ask again (another voter, after a while).
    Failed(String),
    /// An entry this build cannot read.
    Unreadable(String),
}

pub struct MetadataFollower {
    me: NodeId,
    voters: Vec<NodeId>,
    links: Rc<dyn Links>,
    /// The image of the committed log, as applied here (shared with the broker, which
    /// publishes it to its shards).
    metadata: Rc<AppliedMetadata>,
    /// The active controller, as the voter asked last knew it.
    leader: Cell<Option<NodeId>>,
    /// The voter asked next.
    target: Cell<usize>,
}

impl MetadataFollower {
    pub fn new(
        me: NodeId,
        voters: Vec<NodeId>,
        links: Rc<dyn Links>,
        metadata: Rc<AppliedMetadata>,
    ) -> Self {
        Self { me, voters, links, metadata, leader: Cell::new(None), target: Cell::new(0) }
    }

    /// Follows the log until `stop`, or until an entry this build cannot read (a newer format)
    /// arrives: the broker must not go on with an image that is not the log's.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<(), String> {
        let follow = async {
            loop {
                let wait = match self.fetch_once().await {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => POLL_INTERVAL,
                    Err(Fetched::Unreadable(why)) => return Err(why),
                    Err(Fetched::Failed(why)) => {
                        tracing::debug!(node = %self.me, "following the metadata log: {why}");
                        self.target.set(self.next_voter());
                        RETRY_WAIT
                    }
                };
                glommio::timer::sleep(wait).await;
            }
        };
        let stopped = async {
            stop.await;
            Ok(())
        };
        futures_lite::future::or(follow, stopped).await
    }

    /// Asks one voter for what follows; `Ok(true)` when it gave entries (there may be more).
    async fn fetch_once(&self) -> Result<bool, Fetched> {
        let no_voters = || Fetched::Failed("no voters".into());
        let voter = *self.voters.get(self.target.get()).ok_or_else(no_voters)?;
        let from = self.metadata.applied().saturating_add(1);
        let answer = (self.links.fetch_metadata(voter, from).await)
            .map_err(|e| Fetched::Failed(e.error.message))?;
        self.leader.set(answer.leader);
        if let Some((index, data)) = answer.snapshot {
            // Unreadable stops the broker, as an unreadable entry does: the voter took this
            // snapshot of its own image.
            let image = MetadataImage::decode_snapshot(&data).map_err(|why| {
                Fetched::Unreadable(format!("voter {voter}'s snapshot at entry {index}: {why}"))
            })?;
            self.metadata.restore(index, image).map_err(Fetched::Failed)?;
            self.metadata.notify();
            tracing::info!(node = %self.me, %voter, index, "caught up from a metadata snapshot");
            return Ok(true);
        }
        if answer.entries.is_empty() {
            // Caught up with this voter; the active controller is never behind it, so ask that
            // one next (a lagging or cut-off voter would keep this broker behind).
            let leader = answer.leader.and_then(|l| self.voters.iter().position(|v| *v == l));
            let next = leader.unwrap_or_else(|| self.next_voter());
            // A voter that knows no leader may be cut off itself: try the next.
            self.target.set(next);
            return Ok(false);
        }
        for (index, data) in answer.entries {
            let expected = self.metadata.applied().saturating_add(1);
            if index != expected {
                let why = format!("voter {voter} sent entry {index} where {expected} follows");
                self.metadata.notify();
                return Err(Fetched::Failed(why));
            }
            self.metadata.apply(index, &data).map_err(Fetched::Unreadable)?;
        }
        self.metadata.notify();
        Ok(true)
    }

    /// The voter after the one asked last, round the voters.
    fn next_voter(&self) -> usize {
        (self.target.get() + 1) % self.voters.len().max(1)
    }

    pub fn status(&self) -> ClusterStatus {
        let (image, applied) = (self.metadata.image(), self.metadata.applied());
        let mut status = status_of(self.me, &self.voters, &image, applied);
        status.leader = self.leader.get();
        status.snapshot = self.metadata.restored();
        status
    }
}
