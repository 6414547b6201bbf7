//! What shard 0 does for the cluster: it hosts the controller voter (when this broker is one),
//! so Raft messages and requests to the controller arriving on any shard are forwarded here.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cluster::follower::MetadataFollower;
use crate::cluster::membership::Membership;
use crate::cluster::metadata::ClusterId;
use crate::cluster::node::MetadataEntries;
use crate::cluster::node::{
    ClusterStatus, ControllerAnswer, ControllerError, ControllerNode, ControllerRequest,
};
use crate::cluster::quorum::Durable;
use crate::cluster::raft_wire::WireMessage;
use crate::cluster::voter_log::VoterLog;
use crate::error::{BrokerError, ErrorKind};
use crate::log::storage::DmaStorage;
use crate::shard::call::{
    AskController, CommittedMetadata, DescribeCluster, HeartbeatsLost, NextProducerId, StepVoter,
};

use crate::shard::{Shard, CONTROLLER_SHARD};
use crate::types::NodeId;

/// How long a broker waits for a change it asked the controller for to reach all its shards
/// before answering anyway.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);
/// About how much of the metadata log one fetch of a following broker carries.
const METADATA_FETCH_BYTES: u64 = 1024 * 1024;

impl Shard {
    /// Opens the controller voter's log and state in the data directory, on this shard's disk
    /// budgets (shard 0, at start).
    pub async fn open_voter_log(
        &self,
        voters: &[NodeId],
    ) -> std::io::Result<(VoterLog<DmaStorage>, Durable)> {
        let segment_bytes = self.config.metadata_log_segment_bytes;
        VoterLog::open(&self.config.data_dir, voters, segment_bytes, self.limits(), self.shared())
            .await
    }

    /// Makes `membership` the broker's (shard 0, at start).
    pub fn host_membership(&self, membership: Rc<Membership>) {
        *self.membership.borrow_mut() = Some(membership);
    }

    /// A producer id no other producer in the cluster has (from the broker's block, which
    /// shard 0 keeps).
    pub async fn next_producer_id(self: &Rc<Self>) -> Result<i64, BrokerError> {
        self.ask(CONTROLLER_SHARD, NextProducerId {}).await?
    }

    pub(super) async fn next_producer_id_here(&self) -> Result<i64, BrokerError> {
        let membership = self.membership.borrow().clone();
        let Some(membership) = membership else {
            let why = "the broker has not joined its cluster yet";
            return Err(BrokerError::new(ErrorKind::CoordinatorNotAvailable, why));
        };
        membership.next_producer_id().await
    }

    /// Makes `node` this shard's controller voter (shard 0, at start).
    pub fn host_voter(&self, node: Rc<ControllerNode>) {
        *self.voter.borrow_mut() = Some(node);
    }

    fn hosted_voter(&self) -> Result<Rc<ControllerNode>, BrokerError> {
        self.voter.borrow().clone().ok_or_else(|| {
            BrokerError::new(
                ErrorKind::NotController,
                format!("node {} is not a controller voter", self.config.node_id),
            )
        })
    }

    /// Hands Raft messages from voter `from` to this broker's voter, wherever they arrived.
    pub async fn deliver_voter_messages(
        self: &Rc<Self>,
        from: NodeId,
        cluster_id: Option<ClusterId>,
        messages: Vec<WireMessage>,
    ) -> Result<(), BrokerError> {
        self.ask(CONTROLLER_SHARD, StepVoter { from, cluster_id, messages }).await?
    }

    pub(super) fn step_voter(
        &self,
        from: NodeId,
        cluster_id: Option<ClusterId>,
        messages: Vec<WireMessage>,
    ) -> Result<(), BrokerError> {
        let voter = self.hosted_voter()?;
        voter
            .receive(from, cluster_id, messages)
            .map_err(|why| BrokerError::new(ErrorKind::InvalidRequest, why))
    }

    /// Connection `via`, which carried broker `node`'s heartbeats to this broker, closed: this
    /// broker's voter, if it is the active controller and last heard the broker over it, fences
    /// it. Not while this broker stops (its own connections close).
    pub async fn heartbeats_lost(self: &Rc<Self>, node: NodeId, broker_epoch: u64, via: u64) {
        if self.stopping.get() {
            return;
        }
        let lost = HeartbeatsLost { node, broker_epoch, via };
        if let Err(e) = self.ask(CONTROLLER_SHARD, lost).await {
            tracing::debug!(%node, "a lost heartbeat connection: {e}");
        }
    }

    pub(super) async fn heartbeats_lost_here(&self, node: NodeId, broker_epoch: u64, via: u64) {
        let voter = self.voter.borrow().clone();
        if let Some(voter) = voter {
            voter.heartbeats_lost(node, broker_epoch, via).await;
        }
    }

    /// A broker's request to the active controller, answered by this broker's voter.
    pub async fn ask_controller(
        self: &Rc<Self>,
        request: ControllerRequest,
    ) -> Result<ControllerAnswer, ControllerError> {
        self.ask_controller_via(request, None).await
    }

    /// The same, for a request that came over connection `via`.
    pub async fn ask_controller_via(
        self: &Rc<Self>,
        request: ControllerRequest,
        via: Option<u64>,
    ) -> Result<ControllerAnswer, ControllerError> {
        match self.ask(CONTROLLER_SHARD, AskController { request, via }).await {
            Ok(answer) => answer,
            Err(error) => Err(error.into()),
        }
    }

    /// A request to the active controller from this broker, through its membership (which
    /// follows the controller from voter to voter).
    pub(super) async fn forward_here(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerAnswer, ControllerError> {
        let membership = self.membership.borrow().clone();
        let Some(membership) = membership else {
            let why = "the broker has not joined its cluster yet";
            return Err(ControllerError::new(ErrorKind::NotAvailable, why));
        };
        let answer = membership.ask_controller(request).await?;
        if let ControllerAnswer::MetadataChanged { index } = answer {
            // A change answered once every shard of this broker has it: the asker's next
            // request finds it whichever shard serves it. (Bounded: it is committed anyway.)
            self.wait_published_everywhere(index, Instant::now() + PUBLISH_WAIT).await;
        }
        Ok(answer)
    }

    pub(super) async fn ask_controller_here(
        &self,
        request: ControllerRequest,
        via: Option<u64>,
    ) -> Result<ControllerAnswer, ControllerError> {
        let voter = self.hosted_voter()?;
        voter.handle(request, via).await
    }

    /// The cluster as this broker's voter sees it.
    pub async fn describe_cluster(self: &Rc<Self>) -> Result<ClusterStatus, BrokerError> {
        self.ask(CONTROLLER_SHARD, DescribeCluster {}).await?
    }

    pub(super) fn describe_cluster_here(&self) -> Result<ClusterStatus, BrokerError> {
        if let Some(follower) = self.follower.borrow().as_ref() {
            return Ok(follower.status());
        }
        Ok(self.hosted_voter()?.status())
    }

    /// Makes `follower` the broker's copy of the metadata (shard 0 of a broker that is not a
    /// voter, at start).
    pub fn host_follower(&self, follower: Rc<MetadataFollower>) {
        *self.follower.borrow_mut() = Some(follower);
    }

    /// Committed metadata entries from `from` on, from this broker's voter.
    pub async fn committed_metadata(
        self: &Rc<Self>,
        from: u64,
    ) -> Result<MetadataEntries, BrokerError> {
        self.ask(CONTROLLER_SHARD, CommittedMetadata { from }).await?
    }

    pub(super) fn committed_metadata_here(
        &self,
        from: u64,
    ) -> Result<MetadataEntries, BrokerError> {
        let voter = self.hosted_voter()?;
        voter
            .committed_since(from, METADATA_FETCH_BYTES)
            .map_err(|why| BrokerError::new(ErrorKind::StorageError, why))
    }
}
