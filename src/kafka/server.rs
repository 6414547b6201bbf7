//! One Kafka connection: read size-prefixed requests, run each in its own task, write the
//! responses strictly in request order (Kafka clients pipeline and match by order).
//!
//! The same two budgets as the native server bound a connection's memory: request bodies in
//! flight, and fetch responses reserved (in request order, by the reader) before they are built.
//! A request that cannot be framed or decoded (bad size, unknown API key, a version not served,
//! a body the codec rejects) closes the connection after the responses before it, with a log line
//! naming the cause: that is what Kafka brokers do, and a Kafka stream cannot be re-synchronised.
//! The one exception is ApiVersions at a version above the highest served, answered in v0 layout
//! with UNSUPPORTED_VERSION and the served ranges (KIP-511) so the client can retry lower.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;
use kafka_protocol::messages::ApiKey;

use crate::kafka::codec::{self, Request, RequestPrefix, REQUEST_PREFIX_BYTES};
use crate::kafka::handlers::{self, Connection};
use crate::kafka::versions;
use crate::shard::Shard;
use crate::transport::{
    idle_bounded, write_coalesced, Budgets, SocketReader, INFLIGHT_BYTES_MAX, INFLIGHT_REQUESTS_MAX,
};

/// An encoded response (its chunks written back to back), with the fetch budget it holds until
/// written.
pub struct Reply {
    pub frame: Vec<Bytes>,
    pub reserved: Option<StaticPermit>,
}

/// What a request task leaves for the writer.
type Outcome = Result<Option<Reply>, String>;

/// Serves one Kafka connection until it closes or the shard stops.
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let connection = Rc::new(Connection { peer, local: stream.local_addr().ok() });
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(peer = %connection.peer, "set_nodelay: {e}");
    }
    let (mut reader, writer) = SocketReader::split(stream);
    let (queue, replies) = local_channel::new_bounded(INFLIGHT_REQUESTS_MAX);
    let Budgets { bodies, responses } = Budgets::default();
    let writer = glommio::spawn_local(write_replies(
        replies,
        writer,
        responses.clone(),
        connection.peer.clone(),
    ));
    let reading = Reading { shard: &shard, connection: &connection, bodies, responses };
    if let Err(reason) = reading.run(&mut reader, &queue).await {
        tracing::warn!(peer = %connection.peer, "closing Kafka connection: {reason}");
    }
    drop(queue);
    writer.await;
}

struct Reading<'a> {
    shard: &'a Rc<Shard>,
    connection: &'a Rc<Connection>,
    bodies: Rc<Semaphore>,
    responses: Rc<Semaphore>,
}

type Queue = LocalSender<JoinHandle<Outcome>>;

impl Reading<'_> {
    /// Reads requests until the client closes, the shard stops, or a request ends the
    /// connection (the `Err` says why).
    async fn run(&self, reader: &mut SocketReader, queue: &Queue) -> Result<(), String> {
        loop {
            let stop = async {
                self.shard.wait_for_stop().await;
                None
            };
            let next = futures_lite::future::or(
                async {
                    // When producers outrun the disk, stop reading until it catches up.
                    self.shard.queued.wait_below_limit().await;
                    Some(self.read_frame(reader).await)
                },
                stop,
            );
            let (frame, permit) = match next.await {
                None | Some(Ok(None)) => return Ok(()),
                Some(Ok(Some(read))) => read,
                Some(Err(e)) => return Err(e),
            };
            let received = Instant::now();
            let Some(prefix) = RequestPrefix::read(&frame) else {
                return Err(format!("a {}-byte request has no header", frame.len()));
            };
            let Ok(api) = ApiKey::try_from(prefix.api_key) else {
                return Err(format!("unknown API key {}", prefix.api_key));
            };
            if api == ApiKey::ApiVersions && prefix.api_version > versions::api_versions_max() {
                let body = versions::api_versions_response(codec::UNSUPPORTED_VERSION);
                let reply = codec::encode_response(api, 0, prefix.correlation_id, &body)?;
                let reply = Reply { frame: vec![reply], reserved: None };
                let task = glommio::spawn_local(async move { Ok(Some(reply)) }).detach();
                queue.send(task).await.map_err(|_| "response writer stopped".to_string())?;
                continue;
            }
            if !versions::is_served(api, prefix.api_version) {
                return Err(format!("{api:?} v{} is not supported", prefix.api_version));
            }
            let request = codec::decode_request(api, frame)
                .map_err(|e| format!("{api:?} v{}: undecodable: {e}", prefix.api_version))?;
            let reserved = match &request.body {
                Request::Fetch(fetch) => {
                    let bytes = handlers::fetch::response_bytes_max(fetch) as u64;
                    let permit = self.responses.acquire_static_permit(bytes).await;
                    Some(permit.map_err(|_| "connection closing".to_string())?)
                }
                _ => None,
            };
            let (shard, connection) = (self.shard.clone(), self.connection.clone());
            let task = glommio::spawn_local(async move {
                let reply = handlers::handle(shard, connection, request, received).await;
                drop(permit);
                reply.map(|frame| frame.map(|frame| Reply { frame, reserved }))
            })
            .detach();
            queue.send(task).await.map_err(|_| "response writer stopped".to_string())?;
        }
    }

    /// Reads one size-prefixed request. `Ok(None)` at a clean end of stream.
    async fn read_frame(
        &self,
        reader: &mut SocketReader,
    ) -> Result<Option<(Bytes, StaticPermit)>, String> {
        let idle = Duration::from_millis(self.shard.config.connections_max_idle_ms);
        let mut size = [0u8; 4];
        let first = idle_bounded(idle, reader.read(&mut size))
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if first == 0 {
            return Ok(None);
        }
        idle_bounded(idle, reader.read_exact(&mut size[first..]))
            .await
            .map_err(|e| mid_frame(e, "size"))?;
        let size = i32::from_be_bytes(size);
        let max = self.shard.config.socket_request_max_bytes;
        if size < REQUEST_PREFIX_BYTES as i32 || size as u32 > max {
            return Err(format!(
                "request size {size} outside [{REQUEST_PREFIX_BYTES}, socket.request.max.bytes {max}]"
            ));
        }
        let size = size as usize;
        let permit = self
            .bodies
            .acquire_static_permit(size.min(INFLIGHT_BYTES_MAX) as u64)
            .await
            .map_err(|e| e.to_string())?;
        // Memory is reserved as bytes arrive: a size alone cannot make the broker hold it.
        let mut body = BytesMut::new();
        reader.read_body(&mut body, size, Some(idle)).await.map_err(|e| mid_frame(e, "body"))?;
        Ok(Some((body.freeze(), permit)))
    }
}

fn mid_frame(e: io::Error, part: &str) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("connection closed in the middle of a request {part}")
    } else {
        format!("read failed: {e}")
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    replies: LocalReceiver<JoinHandle<Outcome>>,
    mut writer: W,
    responses: Rc<Semaphore>,
    peer: String,
) {
    while let Some(task) = replies.recv().await {
        let reply = match task.await {
            Some(Ok(Some(reply))) => reply,
            Some(Ok(None)) | None => continue,
            Some(Err(why)) => {
                // Closing our side ends the client's wait; dropping the queue stops the reader.
                tracing::error!(%peer, "closing Kafka connection: {why}");
                responses.close();
                break;
            }
        };
        let written = async {
            write_coalesced(&mut writer, reply.frame.iter().map(|c| &c[..])).await?;
            writer.flush().await
        };
        if let Err(e) = written.await {
            tracing::debug!("Kafka write failed, dropping the connection: {e}");
            // Stop a reader waiting for budget; let queued requests finish and free theirs.
            responses.close();
            while replies.recv().await.is_some() {}
            break;
        }
        drop(reply.reserved);
    }
    let _ = writer.close().await;
}
