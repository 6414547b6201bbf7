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

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;
use rkyv::util::AlignedVec;
use zerocopy::IntoBytes;

use crate::metrics::{Hist, Metrics};
use crate::native::frame::{
    FrameError, FrameHeader, FLAG_ERROR, FLAG_RESPONSE, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use crate::native::handlers;
use crate::native::messages::{encode, ErrorBody, ErrorCode};
use crate::record::ENTRY_HEADER_BYTES;
use crate::shard::Shard;

/// Requests one connection may have in flight before the broker stops reading from it.
pub const INFLIGHT_REQUESTS_MAX: usize = 64;
/// Request bytes one connection may have in flight; a larger single frame takes the whole budget.
pub const INFLIGHT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Fetch response bytes one connection may have reserved; one fetch's maximum fits in it whole.
pub const RESPONSE_BYTES_MAX: usize = crate::native::handlers::FETCH_BYTES_MAX;
/// Spare bytes before the meta in every body buffer: room for the entry header a produce
/// payload becomes, so the payload is stored without a copy.
pub const BODY_PREFIX_BYTES: usize = ENTRY_HEADER_BYTES;
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A request body is committed to memory this much at a time, as it arrives.
const BODY_READ_STEP_BYTES: usize = 1024 * 1024;
/// Response chunks smaller than this are copied into one write; larger ones are written as is.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// A decoded request frame: the header and the body buffer (prefix, meta, padding, data).
pub struct RequestFrame {
    pub header: FrameHeader,
    pub body: AlignedVec<16>,
    pub received: Instant,
    /// This frame's share of the body budget, held until it is answered.
    _permit: StaticPermit,
}

impl RequestFrame {
    pub fn meta(&self) -> &[u8] {
        &self.body[BODY_PREFIX_BYTES..BODY_PREFIX_BYTES + self.header.meta_len.get() as usize]
    }

    pub fn data_start(&self) -> usize {
        BODY_PREFIX_BYTES + self.header.padded_meta_len()
    }

    pub fn data(&self) -> &[u8] {
        &self.body[self.data_start()..]
    }
}

/// A response ready to write: header, meta (padded) and data chunks.
pub struct Response {
    head: Vec<u8>,
    data: Vec<Bytes>,
    /// Budget held until the response is written.
    reserved: Option<StaticPermit>,
    /// For a fetch woken by new data: when, to time its delivery once written.
    woken_at: Option<Instant>,
}

impl Response {
    pub fn new(api: u8, flags: u16, request_id: u64, meta: &[u8], data: Vec<Bytes>) -> Self {
        let data_len: usize = data.iter().map(Bytes::len).sum();
        // Fetched entries carry their own checksums, which clients verify; responses do not
        // pay for a second pass over the data.
        let header =
            FrameHeader::new(api, FLAG_RESPONSE | flags, request_id, meta.len(), data_len, 0);
        let mut head = Vec::with_capacity(FRAME_HEADER_BYTES + header.padded_meta_len());
        head.extend_from_slice(header.as_bytes());
        head.extend_from_slice(meta);
        head.resize(FRAME_HEADER_BYTES + header.padded_meta_len(), 0);
        Self { head, data, reserved: None, woken_at: None }
    }

    /// Keeps `permit` until this response has been written.
    pub fn holding(mut self, permit: Option<StaticPermit>) -> Self {
        self.reserved = permit;
        self
    }

    /// Records [`Hist::FetchDelivery`] from `woken_at` once this response has been written.
    pub fn timing_delivery_from(mut self, woken_at: Option<Instant>) -> Self {
        self.woken_at = woken_at;
        self
    }

    pub fn error(api: u8, request_id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        let body = encode(&ErrorBody::new(code, message));
        Self::new(api, FLAG_ERROR, request_id, &body, Vec::new())
    }

    async fn write_to<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> io::Result<()> {
        let chunks = std::iter::once(&self.head[..]).chain(self.data.iter().map(|c| &c[..]));
        write_coalesced(writer, chunks).await?;
        writer.flush().await
    }
}

/// Writes `chunks` back to back: small ones are copied together so a response of many small
/// entries goes out in a few large writes; large ones are written from where they lie. Both
/// listeners write their responses with it.
pub async fn write_coalesced<'a, W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<()> {
    let mut pending = Vec::new();
    for chunk in chunks {
        if chunk.len() < COALESCE_BYTES_MAX && pending.len() + chunk.len() <= 2 * COALESCE_BYTES_MAX
        {
            pending.extend_from_slice(chunk);
            continue;
        }
        if !pending.is_empty() {
            writer.write_all(&pending).await?;
            pending.clear();
        }
        if chunk.len() < COALESCE_BYTES_MAX {
            pending.extend_from_slice(chunk);
        } else {
            writer.write_all(chunk).await?;
        }
    }
    writer.write_all(&pending).await
}

/// Counts a shard's open connections so a stop can wait for them to drain.
#[derive(Default)]
pub struct Connections {
    open: Cell<usize>,
    changed: Event,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Waits until every connection has closed, at most `wait`. Returns whether they did.
    pub async fn wait_closed(&self, wait: Duration) -> bool {
        let closed = async {
            loop {
                let listener = self.changed.listen();
                if self.open.get() == 0 {
                    return true;
                }
                listener.await;
            }
        };
        let timeout = async {
            glommio::timer::sleep(wait).await;
            false
        };
        futures_lite::future::or(closed, timeout).await
    }

    fn enter(&self) {
        self.open.set(self.open.get() + 1);
    }

    fn leave(&self) {
        self.open.set(self.open.get() - 1);
        self.changed.notify(usize::MAX);
    }
}

/// Runs one read of a connection, failing with `TimedOut` when `idle` passes without it
/// completing (`connections.max.idle.ms`): a client that stalls, between requests or halfway
/// through one, is closed instead of holding its connection and buffers forever.
pub async fn idle_bounded<T>(
    idle: Duration,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let expired = async {
        glommio::timer::sleep(idle).await;
        let why = format!("idle for {} ms (connections.max.idle.ms)", idle.as_millis());
        Err(io::Error::new(io::ErrorKind::TimedOut, why))
    };
    futures_lite::future::or(read, expired).await
}

/// Accepts connections until the shard stops, serving each with `serve` in a task of its own.
/// Beyond this shard's share of `max.connections`, a new connection is closed at once.
pub async fn accept_loop<F, Fut>(
    shard: Rc<Shard>,
    listener: TcpListener,
    connections: Rc<Connections>,
    serve: F,
) where
    F: Fn(Rc<Shard>, TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let limit = shard.config.max_connections.div_ceil(shard.count.max(1) as u32) as usize;
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let stop = async {
            shard.wait_for_stop().await;
            None
        };
        let accepted =
            futures_lite::future::or(async { Some(listener.accept().await) }, stop).await;
        match accepted {
            None => return,
            Some(Ok(stream)) if connections.open() >= limit => {
                // One line a second at most: a flood of connections must not flood the log.
                if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let peer =
                        stream.peer_addr().map_or_else(|_| "unknown".into(), |a| a.to_string());
                    tracing::warn!(
                        shard = shard.id,
                        %peer,
                        open = connections.open(),
                        "closing a new connection: this shard's share of max.connections is in use"
                    );
                    last_refusal_logged = Some(Instant::now());
                }
                drop(stream);
            }
            Some(Ok(stream)) => {
                let connections = connections.clone();
                connections.enter();
                let served = serve(shard.clone(), stream);
                glommio::spawn_local(async move {
                    served.await;
                    connections.leave();
                })
                .detach();
            }
            Some(Err(e)) => {
                // Usually EMFILE: wait a little rather than spin on the error.
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

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

/// A connection's two memory budgets; see the module doc.
#[derive(Clone)]
struct Budgets {
    bodies: Rc<Semaphore>,
    responses: Rc<Semaphore>,
}

impl Budgets {
    fn new() -> Self {
        Self {
            bodies: Rc::new(Semaphore::new(INFLIGHT_BYTES_MAX as u64)),
            responses: Rc::new(Semaphore::new(RESPONSE_BYTES_MAX as u64)),
        }
    }

    /// Fails every wait for budget, so a reader blocked on one stops.
    fn close(&self) {
        self.bodies.close();
        self.responses.close();
    }
}

/// Serves one native connection until it closes or the shard stops.
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "set_nodelay: {e}");
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (queue, responses) = local_channel::new_bounded(INFLIGHT_REQUESTS_MAX);
    let budgets = Budgets::new();
    let writer = glommio::spawn_local(write_responses(
        responses,
        writer,
        budgets.clone(),
        shard.metrics.clone(),
        peer.clone(),
    ));
    let host: Rc<str> = Rc::from(peer.rsplit_once(':').map_or(peer.as_str(), |(host, _)| host));
    if let Err(reason) = read_requests(&shard, &mut reader, &queue, &budgets, host).await {
        tracing::warn!(%peer, "closing connection: {reason}");
    }
    drop(queue);
    writer.await;
}

async fn read_requests<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    reader: &mut R,
    queue: &LocalSender<JoinHandle<Option<Response>>>,
    budgets: &Budgets,
    peer: Rc<str>,
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
        let handled = handlers::handle(shard.clone(), frame, prepared, peer.clone());
        let task = glommio::spawn_local(handled).detach();
        if queue.send(task).await.is_err() {
            return Err("response writer stopped".into());
        }
    }
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
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
    // Reserve the address space up front (no copies as it fills) but touch, and so commit,
    // memory only as bytes arrive: a header alone cannot make the broker hold its claimed size.
    let total = BODY_PREFIX_BYTES + body_len;
    let mut body = AlignedVec::<16>::with_capacity(total + 16);
    body.resize(BODY_PREFIX_BYTES, 0);
    while body.len() < total {
        let filled = body.len();
        body.resize(total.min(filled + BODY_READ_STEP_BYTES), 0);
        idle_bounded(idle, reader.read_exact(&mut body[filled..]))
            .await
            .map_err(|e| eof_mid_frame(e, "body"))?;
    }
    let received = Instant::now();
    Ok(Some(RequestFrame { header, body, received, _permit: permit }))
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
        if let (Ok(()), Some(woken_at)) = (&written, response.woken_at) {
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
