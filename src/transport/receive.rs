//! The read half of a connection, receiving a frame's body straight into the body's own buffer.
//!
//! `AsyncRead` fills only initialised slices, so a body read through it must be zeroed first,
//! and every byte a broker stores arrives in a body (a produce request on the leader, a
//! replica fetch's response on each follower). In an RF 3 closed loop that zeroing was a ninth
//! of each broker's CPU (perf, `memset` under `AlignedVec::resize`), on a machine whose CPUs
//! were the limit. [`SocketReader::read_body`] instead hands the buffer's unused capacity to
//! recv(2), which only writes it: nothing is zeroed, and nothing is copied but what the frame
//! header's buffered read happened to take of the body.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader, ReadHalf};
use glommio::net::TcpStream;
use rkyv::util::AlignedVec;

use super::idle_bounded;

/// Bytes one step of a body read may reserve: memory is committed as bytes arrive, so a size
/// in a header alone cannot make the broker hold it.
const RESERVE_STEP_BYTES: usize = 1024 * 1024;

/// The buffer headers are read through. A read into it takes what the socket holds, up to its
/// size, and the part of a body it takes is copied out again; so it is kept small: many small
/// frames still arrive in one read, and a large body loses at most this much to the copy. At
/// 256 KiB (the native client's size before) this copy was a third of each RF 3 broker's
/// `memmove` (perf).
const HEADER_BUFFER_BYTES: usize = 16 * 1024;

/// A buffer a body is received into: bytes up to its length are the body so far.
pub trait BodyBuffer {
    fn filled(&self) -> usize;

    /// The unused capacity after the filled bytes: at least one byte and at most `max`,
    /// reserving more when there is none.
    fn spare(&mut self, max: usize) -> &mut [MaybeUninit<u8>];

    /// Counts `n` more bytes as filled.
    ///
    /// # Safety
    ///
    /// The first `n` bytes of what [`Self::spare`] last returned have been written.
    unsafe fn advance(&mut self, n: usize);
}

impl BodyBuffer for AlignedVec<16> {
    fn filled(&self) -> usize {
        self.len()
    }

    fn spare(&mut self, max: usize) -> &mut [MaybeUninit<u8>] {
        if self.len() == self.capacity() {
            self.reserve(max.clamp(1, RESERVE_STEP_BYTES));
        }
        let len = self.len();
        let spare = (self.capacity() - len).min(max);
        // SAFETY: the `spare` bytes after the first `len` lie within the allocation, which
        // nothing else references while `self` is borrowed mutably; as `MaybeUninit` they may
        // hold anything, and the slice only lets them be written.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.as_mut_ptr().add(len).cast::<MaybeUninit<u8>>(),
                spare,
            )
        }
    }

    unsafe fn advance(&mut self, n: usize) {
        // SAFETY: the caller wrote the `n` bytes after the current length, within capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

impl BodyBuffer for BytesMut {
    fn filled(&self) -> usize {
        self.len()
    }

    fn spare(&mut self, max: usize) -> &mut [MaybeUninit<u8>] {
        if self.len() == self.capacity() {
            self.reserve(max.clamp(1, RESERVE_STEP_BYTES));
        }
        let spare = self.spare_capacity_mut();
        let len = spare.len().min(max);
        &mut spare[..len]
    }

    unsafe fn advance(&mut self, n: usize) {
        // SAFETY: the caller wrote the `n` bytes after the current length, within capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

/// A connection's read half: headers and other small reads go through a buffer
/// ([`AsyncRead`]), bodies through [`Self::read_body`].
pub struct SocketReader {
    buffered: BufReader<ReadHalf<TcpStream>>,
    /// The socket's descriptor, for recv(2) into uninitialised memory. `buffered` holds the
    /// stream, so it stays open as long as this reader.
    fd: RawFd,
}

impl SocketReader {
    /// `stream`'s read half, with a small buffer for headers; the write half goes its own way.
    pub fn split(stream: TcpStream) -> (Self, futures_lite::io::WriteHalf<TcpStream>) {
        let fd = stream.as_raw_fd();
        let (reader, writer) = futures_lite::io::split(stream);
        (Self { buffered: BufReader::with_capacity(HEADER_BUFFER_BYTES, reader), fd }, writer)
    }

    /// Fills `body` to `len` bytes from the connection. Fails with `UnexpectedEof` if the
    /// connection ends first, and with `TimedOut` when `idle` (if any) passes with no byte
    /// arriving.
    pub async fn read_body(
        &mut self,
        body: &mut impl BodyBuffer,
        len: usize,
        idle: Option<Duration>,
    ) -> io::Result<()> {
        while body.filled() < len {
            let spare = body.spare(len - body.filled());
            let received = match idle {
                Some(idle) => idle_bounded(idle, self.receive(spare)).await?,
                None => self.receive(spare).await?,
            };
            if received == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // SAFETY: `receive` wrote the first `received` bytes of `spare`.
            unsafe { body.advance(received) };
        }
        Ok(())
    }

    /// Writes at least one byte into the start of `spare`, waiting for one to arrive, and
    /// returns how many; 0 only at the end of the stream. `spare` is not empty.
    async fn receive(&mut self, spare: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        // The header's buffered read may have taken the body's first bytes.
        let buffered = self.buffered.buffer();
        if !buffered.is_empty() {
            let n = buffered.len().min(spare.len());
            // SAFETY: both ranges hold `n` bytes, and they do not overlap: one is the reader's
            // buffer, the other the caller's (`MaybeUninit::write_copy_of_slice` would say
            // this without `unsafe`, but is newer than our minimum Rust).
            unsafe {
                std::ptr::copy_nonoverlapping(buffered.as_ptr(), spare.as_mut_ptr().cast(), n);
            }
            Pin::new(&mut self.buffered).consume(n);
            return Ok(n);
        }
        if let Some(n) = self.try_recv(spare)? {
            return Ok(n);
        }
        // Nothing to receive yet: wait through the stream, which takes the first byte that
        // arrives (the buffer is empty, so a read goes straight to the socket), then take what
        // came with it.
        let mut first = [0u8; 1];
        if self.buffered.get_mut().read(&mut first).await? == 0 {
            return Ok(0);
        }
        spare[0].write(first[0]);
        let more = match spare.get_mut(1..) {
            Some(rest) if !rest.is_empty() => self.try_recv(rest)?.unwrap_or(0),
            _ => 0,
        };
        Ok(1 + more)
    }

    /// recv(2) without waiting: `None` when nothing is there to receive.
    fn try_recv(&self, spare: &mut [MaybeUninit<u8>]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: recv writes at most `spare.len()` bytes into the memory `spare` covers,
            // which is valid for writes for as long as the call; it never reads them.
            let n = unsafe {
                libc::recv(self.fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT)
            };
            if let Ok(n) = usize::try_from(n) {
                return Ok(Some(n));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(error),
            }
        }
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.buffered).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::AsyncWriteExt;
    use glommio::net::TcpListener;

    fn run<F: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test());
    }

    /// A connected pair: the reader's end and the peer's.
    async fn pair() -> (SocketReader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let peer = TcpStream::connect(address).await.expect("connect");
        let accepted = listener.accept().await.expect("accept");
        (SocketReader::split(accepted).0, peer)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn bodies_arrive_whole_whatever_the_buffered_read_took_of_them() {
        run(|| async {
            let (mut reader, mut peer) = pair().await;
            let (first, second) = (pattern(3 << 20, 1), pattern(100_000, 2));
            let sending = (first.clone(), second.clone());
            let sender = glommio::spawn_local(async move {
                // Odd pieces with pauses, so the reader finds the socket empty mid-body.
                let mut wire = b"head".to_vec();
                wire.extend_from_slice(&sending.0);
                wire.extend_from_slice(b"next");
                wire.extend_from_slice(&sending.1);
                for (i, piece) in wire.chunks(777_777).enumerate() {
                    peer.write_all(piece).await.expect("write");
                    if i % 2 == 0 {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                }
                peer
            })
            .detach();
            let mut head = [0u8; 4];
            reader.read_exact(&mut head).await.expect("head");
            assert_eq!(&head, b"head");
            // The buffered read took the head and the body's first bytes with it.
            assert!(!reader.buffered.buffer().is_empty());
            let mut body = AlignedVec::<16>::with_capacity(2 + first.len());
            body.extend_from_slice(b"pf");
            reader.read_body(&mut body, 2 + first.len(), None).await.expect("first body");
            assert_eq!(&body[..2], b"pf");
            assert!(body[2..] == first[..], "the first body differs from what was sent");
            reader.read_exact(&mut head).await.expect("second head");
            assert_eq!(&head, b"next", "the body read took bytes past its end");
            let mut body = BytesMut::new();
            let idle = Some(Duration::from_secs(10));
            reader.read_body(&mut body, second.len(), idle).await.expect("second body");
            assert!(body[..] == second[..], "the second body differs from what was sent");
            drop(sender.await);
        });
    }

    #[test]
    fn a_connection_closed_mid_body_is_an_unexpected_end() {
        run(|| async {
            let (mut reader, mut peer) = pair().await;
            peer.write_all(&pattern(1000, 3)).await.expect("write");
            drop(peer);
            let mut body = AlignedVec::<16>::new();
            let error = reader.read_body(&mut body, 5000, None).await.expect_err("a short body");
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(body.len(), 1000);
        });
    }

    #[test]
    fn a_peer_that_stops_sending_mid_body_is_idle() {
        run(|| async {
            let (mut reader, mut peer) = pair().await;
            peer.write_all(&pattern(1000, 4)).await.expect("write");
            let mut body = BytesMut::new();
            let idle = Some(Duration::from_millis(100));
            let error = reader.read_body(&mut body, 5000, idle).await.expect_err("a stalled body");
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert_eq!(body.len(), 1000);
            drop(peer);
        });
    }
}
