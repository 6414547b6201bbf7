//! Native cluster requests: Raft messages between controller voters, brokers' requests to the
//! active controller, committed metadata for brokers that follow the log, and the cluster's
//! status. Each is forwarded to shard 0, which hosts the
//! voter; a broker that is not a voter answers NOT_CONTROLLER.

use std::rc::Rc;

use bytes::Bytes;

use crate::native::exchange::{answer, undecodable, HeartbeatsSeen, RequestFrame, Response};
use crate::native::frame::Api;
use crate::native::messages::{
    decode, encode, AdminResponse, ClusterStatusResponse, ControllerRequest, ControllerResponse,
    ErrorBody, MetadataFetchRequest, VoterMessagesRequest, WireMessage,
};
use crate::shard::Shard;

pub async fn voter_messages(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: VoterMessagesRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::VoterMessages, request_id, why),
    };
    // The data starts 16-aligned in the body, as archives need (frame.rs).
    let messages = match decode::<Vec<WireMessage>>(frame.data()) {
        Ok(messages) => messages,
        Err(why) => return undecodable(Api::VoterMessages, request_id, why),
    };
    let delivered = shard.deliver_voter_messages(request.from, request.cluster_id, messages);
    let error = match delivered.await {
        Ok(()) => ErrorBody::none(),
        Err(e) => {
            // Debug, not warn: anyone reaching the port could fill the log otherwise.
            tracing::debug!(from = %request.from, "Raft messages refused: {e}");
            ErrorBody::from(&e)
        }
    };
    answer(Api::VoterMessages, request_id, &AdminResponse { error })
}

/// A broker's request to the active controller. A heartbeat it takes marks the connection as
/// that broker's (`HeartbeatsSeen`): when it closes, the controller fences the broker at once.
pub async fn controller_request(
    shard: &Rc<Shard>,
    frame: &RequestFrame,
    beats: &HeartbeatsSeen,
) -> Response {
    let request_id = frame.header.request_id.get();
    let request: ControllerRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::ControllerRequest, request_id, why),
    };
    let beat = match &request {
        ControllerRequest::Heartbeat { node, broker_epoch, .. } => Some((*node, *broker_epoch)),
        _ => None,
    };
    let body = match shard.ask_controller_via(request, Some(beats.connection)).await {
        Ok(answer) => {
            if let Some(beat) = beat {
                beats.last.set(Some(beat));
            }
            ControllerResponse { error: ErrorBody::none(), leader: None, answer: Some(answer) }
        }
        Err(e) => {
            ControllerResponse { error: ErrorBody::from(&e.error), leader: e.leader, answer: None }
        }
    };
    answer(Api::ControllerRequest, request_id, &body)
}

pub async fn metadata_fetch(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: MetadataFetchRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::MetadataFetch, request_id, why),
    };
    match shard.committed_metadata(request.from).await {
        Ok(entries) => {
            let meta = encode(&AdminResponse { error: ErrorBody::none() });
            let data = Bytes::from_owner(encode(&entries));
            Response::new(Api::MetadataFetch as u8, 0, request_id, &meta, vec![data])
        }
        Err(e) => {
            answer(Api::MetadataFetch, request_id, &AdminResponse { error: ErrorBody::from(&e) })
        }
    }
}

pub async fn cluster_status(shard: &Rc<Shard>, request_id: u64) -> Response {
    let body = match shard.describe_cluster().await {
        Ok(status) => ClusterStatusResponse { error: ErrorBody::none(), status: Some(status) },
        Err(e) => ClusterStatusResponse { error: ErrorBody::from(&e), status: None },
    };
    answer(Api::ClusterStatus, request_id, &body)
}
