//! What both listeners (Kafka and native), and soon replication, share of a connection:
//! accepting within `max.connections`, the idle bound on every read, the per-connection memory
//! budgets, and the writer that coalesces small response chunks. The protocols above own their
//! framing and handlers; this layer knows bytes and sockets, not requests.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use glommio::sync::Semaphore;

use crate::metrics::Listener;
use crate::shard::{Shard, FETCH_BYTES_MAX};

mod receive;
pub use receive::{BodyBuffer, SocketReader};

/// Requests one connection may have in flight before the broker stops reading from it.
pub const INFLIGHT_REQUESTS_MAX: usize = 64;
/// Request bytes one connection may have in flight; a larger single frame takes the whole budget.
pub const INFLIGHT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Fetch response bytes one connection may have reserved; one fetch's maximum fits in it whole.
pub const RESPONSE_BYTES_MAX: usize = FETCH_BYTES_MAX;
/// Response chunks smaller than this are copied into one write; larger ones are written as is.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

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

/// The next connection `listener` accepts, or `None` once the shard stops.
pub async fn accept_until_stop(
    shard: &Shard,
    listener: &TcpListener,
) -> Option<io::Result<TcpStream>> {
    let stop = async {
        shard.wait_for_stop().await;
        None
    };
    futures_lite::future::or(async { Some(listener.accept().await.map_err(io::Error::from)) }, stop)
        .await
}

/// Accepts connections until the shard stops, serving each with `serve` in a task of its own.
/// Beyond this shard's share of `max.connections` (as it stands at each accept: it is a dynamic
/// setting), a new connection is closed at once.
pub async fn accept_loop<F, Fut>(
    shard: Rc<Shard>,
    (listener, kind): (TcpListener, Listener),
    connections: Rc<Connections>,
    serve: F,
) where
    F: Fn(Rc<Shard>, TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let limit = || shard.max_connections().div_ceil(shard.count.max(1) as u32) as usize;
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        match accept_until_stop(&shard, &listener).await {
            None => return,
            Some(Ok(stream)) if connections.open() >= limit() => {
                // One line a second at most: a flood of connections must not flood the log.
                if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let peer =
                        stream.peer_addr().map_or_else(|_| "unknown".into(), |a| a.to_string());
                    tracing::warn!(
                        shard = %shard.id,
                        %peer,
                        open = connections.open(),
                        "closing a new connection: this shard's share of max.connections is in use"
                    );
                    last_refusal_logged = Some(Instant::now());
                }
                shard.metrics.connection_refused(kind);
                drop(stream);
            }
            Some(Ok(stream)) => {
                let connections = connections.clone();
                connections.enter();
                shard.metrics.connection_opened(kind);
                let served = serve(shard.clone(), stream);
                let metrics = shard.metrics.clone();
                glommio::spawn_local(async move {
                    served.await;
                    connections.leave();
                    metrics.connection_closed(kind);
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

/// A connection's two memory budgets: request bodies ([`INFLIGHT_BYTES_MAX`]) and fetch responses
/// ([`RESPONSE_BYTES_MAX`]), reserved by the reader in request order and released when the
/// response is written (or the request is answered without one).
#[derive(Clone)]
pub struct Budgets {
    pub bodies: Rc<Semaphore>,
    pub responses: Rc<Semaphore>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            bodies: Rc::new(Semaphore::new(INFLIGHT_BYTES_MAX as u64)),
            responses: Rc::new(Semaphore::new(RESPONSE_BYTES_MAX as u64)),
        }
    }
}

impl Budgets {
    /// Fails every wait for budget, so a reader blocked on one stops.
    pub fn close(&self) {
        self.bodies.close();
        self.responses.close();
    }
}
