//! One native connection: read frames, run each request in its own task, write the responses
//! in request order.
//!
//! Reading and writing run concurrently, so a client may pipeline up to
//! [`INFLIGHT_REQUESTS_MAX`] requests before the broker stops reading from it. Two byte budgets
//! bound a connection's memory: [`INFLIGHT_BYTES_MAX`] of request bodies, and
//! [`RESPONSE_BYTES_MAX`] of fetch responses, reserved when a fetch is read and held until its
//! response is written. Only the reader acquires from either, one request at a time, so
//! reservations are granted in request order and wait only on earlier responses: a client that
//! pipelines fetches without reading them stalls itself instead of filling the broker's memory.
//! Before each frame the reader also waits while the broker's unwritten backlog is over
//! `queued.max.request.bytes` (see [`crate::log::queued`]).
//! A frame with a bad header ends the connection (the stream cannot be re-synchronised) after an
//! error frame saying why; a bad body gets an error response and the connection goes on.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use rkyv::util::AlignedVec;

use crate::metrics::{Hist, Metrics};
use crate::native::exchange::{HeartbeatsSeen, RequestFrame, Response, BODY_PREFIX_BYTES};
use crate::native::frame::{FrameError, FrameHeader, FRAME_HEADER_BYTES, FRAME_MAGIC};
use crate::native::handlers;
use crate::native::messages::ErrorCode;
use crate::shard::Shard;
use crate::transport::{
    idle_bounded, Budgets, SocketReader, INFLIGHT_BYTES_MAX, INFLIGHT_REQUESTS_MAX,
};

enum ReadError {
    Io(io::Error),
    /// A header that cannot be trusted; the error frame to send before closing.
    Frame(FrameError, Response),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Serves one native connection until it closes or the shard stops.
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "set_nodelay: {e}");
    }
    let (mut reader, writer) = SocketReader::split(stream);
    let (queue, responses) = local_channel::new_bounded(INFLIGHT_REQUESTS_MAX);
    let budgets = Budgets::default();
    let writer = glommio::spawn_local(write_responses(
        responses,
        writer,
        budgets.clone(),
        shard.metrics.clone(),
        peer.clone(),
    ));
    let host: Rc<str> = Rc::from(peer.rsplit_once(':').map_or(peer.as_str(), |(host, _)| host));
    let connection = shard.new_connection_id();
    let beats = Rc::new(HeartbeatsSeen { connection, last: std::cell::Cell::new(None) });
    let read = read_requests(&shard, &mut reader, &queue, &budgets, (host, beats.clone())).await;
    if let Err(reason) = read {
        tracing::warn!(%peer, "closing connection: {reason}");
    }
    drop(queue);
    writer.await;
    // A broker whose heartbeats came this way is gone, or cut off: the controller need not
    // wait out its session (`Event::HeartbeatsLost`).
    if let Some((node, broker_epoch)) = beats.last.get() {
        shard.heartbeats_lost(node, broker_epoch, connection).await;
    }
}

async fn read_requests(
    shard: &Rc<Shard>,
    reader: &mut SocketReader,
    queue: &LocalSender<JoinHandle<Option<Response>>>,
    budgets: &Budgets,
    (peer, beats): (Rc<str>, Rc<HeartbeatsSeen>),
) -> Result<(), String> {
    let data_max = shard.config.socket_request_max_bytes;
    let idle = Duration::from_millis(shard.config.connections_max_idle_ms);
    loop {
        let stop = async {
            shard.wait_for_stop().await;
            None
        };
        let next = futures_lite::future::or(
            async {
                // When producers outrun the disk, stop reading until it catches up.
                shard.queued.wait_below_limit().await;
                Some(read_frame(reader, data_max, budgets, idle).await)
            },
            stop,
        );
        let frame = match next.await {
            None | Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(frame))) => frame,
            Some(Err(ReadError::Io(e))) => return Err(format!("read failed: {e}")),
            Some(Err(ReadError::Frame(error, response))) => {
                let sent = glommio::spawn_local(async move { Some(response) }).detach();
                let _ = queue.send(sent).await;
                return Err(error.to_string());
            }
        };
        let prepared = match handlers::decode_fetch(&frame) {
            Some(request) => {
                let bytes = handlers::fetch_max_bytes(&request) as u64;
                let reserved = budgets.responses.acquire_static_permit(bytes).await;
                let reserved = reserved.map_err(|_| "connection closing".to_string())?;
                Some(handlers::PreparedFetch { request, reserved })
            }
            None => None,
        };
        let handled =
            handlers::handle(shard.clone(), frame, prepared, (peer.clone(), beats.clone()));
        let task = glommio::spawn_local(handled).detach();
        if queue.send(task).await.is_err() {
            return Err("response writer stopped".into());
        }
    }
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
async fn read_frame(
    reader: &mut SocketReader,
    data_max: u32,
    budgets: &Budgets,
    idle: Duration,
) -> Result<Option<RequestFrame>, ReadError> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    let first = idle_bounded(idle, reader.read(&mut raw)).await?;
    if first == 0 {
        return Ok(None);
    }
    idle_bounded(idle, reader.read_exact(&mut raw[first..]))
        .await
        .map_err(|e| eof_mid_frame(e, "header"))?;
    let header = FrameHeader::parse(&raw, data_max).map_err(|error| {
        // Echo the request id when the frame at least looks like ours, so the client can tell
        // which request was refused.
        let looks_native = raw[..4] == FRAME_MAGIC.to_le_bytes();
        let request_id = if looks_native {
            u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default())
        } else {
            0
        };
        let response =
            Response::error(raw[5], request_id, ErrorCode::InvalidRequest, error.to_string());
        ReadError::Frame(error, response)
    })?;
    let body_len = header.body_len();
    let permit = budgets
        .bodies
        .acquire_static_permit(body_len.clamp(1, INFLIGHT_BYTES_MAX) as u64)
        .await
        .map_err(|e| ReadError::Io(io::Error::other(e.to_string())))?;
    // Reserve the address space up front (no copies as it fills); memory is touched, and so
    // committed, only as bytes arrive: a header alone cannot make the broker hold its claimed
    // size.
    let total = BODY_PREFIX_BYTES + body_len;
    let mut body = AlignedVec::<16>::with_capacity(total + 16);
    body.resize(BODY_PREFIX_BYTES, 0);
    reader.read_body(&mut body, total, Some(idle)).await.map_err(|e| eof_mid_frame(e, "body"))?;
    Ok(Some(RequestFrame::new(header, body, permit)))
}

fn eof_mid_frame(e: io::Error, part: &str) -> ReadError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ReadError::Io(io::Error::new(
            e.kind(),
            format!("connection closed in the middle of a frame {part}"),
        ))
    } else {
        ReadError::Io(e)
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    responses: LocalReceiver<JoinHandle<Option<Response>>>,
    mut writer: W,
    budgets: Budgets,
    metrics: Rc<Metrics>,
    peer: String,
) {
    while let Some(task) = responses.recv().await {
        let Some(Some(response)) = task.await else {
            continue;
        };
        let written = response.write_to(&mut writer).await;
        if let (Ok(()), Some(woken_at)) = (&written, response.woken_at()) {
            metrics.record(Hist::FetchDelivery, woken_at.elapsed());
        }
        if let Err(e) = written {
            tracing::debug!(%peer, "write failed, dropping the connection: {e}");
            // Stop the reader even if it waits for budget, and let the queued requests finish
            // and free what they hold.
            budgets.close();
            while responses.recv().await.is_some() {}
            break;
        }
    }
    let _ = writer.close().await;
}
