//! A follower's connection to one leader, for its `ReplicaFetch` requests: one at a time, and
//! each partition's part of an answer received straight into the write buffer its log hands
//! out (`log::in_place`), so a follower writes what it fetched without copying it.
//!
//! The answer's frame is read in pieces: its header, its meta (the answers, each with the
//! length of its entries), then each partition's entries in answer order, into the buffer the
//! caller gives for that answer or into bytes of their own.

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncWriteExt, WriteHalf};
use glommio::net::TcpStream;
use rkyv::util::AlignedVec;

use crate::client::connection::{read_response_header, request_head};
use crate::client::ClientError;
use crate::log::in_place::{EntryData, ReceiveBuffer};
use crate::log::storage::{DmaStorage, Storage};
use crate::native::frame::Api;
use crate::native::messages::{
    decode, encode, ErrorBody, ReplicaFetchAnswer, ReplicaFetchRequest, ReplicaFetchResponse,
};
use crate::transport::{BodyBuffer, SocketReader};

/// One partition's entries, as an answer brought them.
pub type Section = EntryData<DmaStorage>;

pub struct ReplicaStream {
    reader: SocketReader,
    writer: WriteHalf<TcpStream>,
    next_request_id: u64,
}

impl ReplicaStream {
    /// Connects to the leader's native listener at `address`, waiting at most `wait`.
    pub async fn connect(address: &str, wait: Duration) -> Result<Self, ClientError> {
        let connecting = async { Some(TcpStream::connect(address).await) };
        let late = async {
            glommio::timer::sleep(wait).await;
            None
        };
        let stream = match futures_lite::future::or(connecting, late).await {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => return Err(ClientError::Io(format!("connecting to {address}: {e}"))),
            None => {
                return Err(ClientError::Io(format!("no connection to {address} within {wait:?}")))
            }
        };
        let _ = stream.set_nodelay(true);
        let (reader, writer) = SocketReader::split(stream);
        Ok(Self { reader, writer, next_request_id: 1 })
    }

    /// Sends `request` and receives its answer: each answer's entries into the buffer `place`
    /// gives for it, or into bytes of their own where it gives none. The sections come back in
    /// answer order. After an error the stream is not in step with the leader: drop it.
    pub async fn fetch(
        &mut self,
        request: &ReplicaFetchRequest,
        mut place: impl FnMut(&ReplicaFetchAnswer) -> Option<ReceiveBuffer<DmaStorage>>,
    ) -> Result<(ReplicaFetchResponse, Vec<Section>), ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let head = request_head(Api::ReplicaFetch, request_id, &encode(request), None);
        self.writer.write_all(&head).await?;
        self.writer.flush().await?;

        let header = read_response_header(&mut self.reader).await.map_err(ClientError::Io)?;
        if header.request_id.get() != request_id {
            let why =
                format!("answer to request {} where {request_id} was asked", header.request_id);
            return Err(ClientError::Protocol(why));
        }
        let mut meta = AlignedVec::<16>::with_capacity(header.padded_meta_len());
        self.receive(&mut meta, header.padded_meta_len(), "meta").await?;
        let meta = &meta[..header.meta_len.get() as usize];
        let data_len = header.data_len.get() as usize;
        // A refusal carries no data: returned as the leader's error, it leaves the stream in
        // step, at the next frame.
        let refused = |body: &ErrorBody| match ClientError::from_body(body) {
            Err(_) if data_len > 0 => {
                Err(ClientError::Protocol(format!("a refusal with {data_len} bytes of data")))
            }
            refused => refused,
        };
        if header.is_error() {
            let body: ErrorBody = decode(meta).map_err(ClientError::Protocol)?;
            refused(&body)?;
            return Err(ClientError::Protocol("error frame without an error code".into()));
        }
        let response: ReplicaFetchResponse = decode(meta).map_err(ClientError::Protocol)?;
        refused(&response.error)?;

        let declared = (response.partitions.iter())
            .try_fold(0usize, |sum, answer| sum.checked_add(usize::try_from(answer.bytes).ok()?));
        if declared != Some(data_len) {
            let why = format!("answers declaring {declared:?} bytes in {data_len} of data");
            return Err(ClientError::Protocol(why));
        }
        let mut sections = Vec::with_capacity(response.partitions.len());
        for answer in &response.partitions {
            let len = answer.bytes as usize;
            let section = match place(answer).filter(|buffer| buffer.capacity() == len) {
                Some(mut buffer) => {
                    self.receive(&mut buffer, len, "entries").await?;
                    let run = buffer.into_run();
                    EntryData::InPlace { run, range: 0..len }
                }
                None => {
                    let mut bytes = BytesMut::with_capacity(len);
                    self.receive(&mut bytes, len, "entries").await?;
                    EntryData::Shared(Bytes::from(bytes))
                }
            };
            sections.push(section);
        }
        Ok((response, sections))
    }

    async fn receive(
        &mut self,
        into: &mut impl BodyBuffer,
        len: usize,
        what: &str,
    ) -> Result<(), ClientError> {
        (self.reader.read_body(into, len, None).await)
            .map_err(|e| ClientError::Io(format!("reading a fetch answer's {what}: {e}")))
    }
}

impl<S: Storage> BodyBuffer for ReceiveBuffer<S> {
    fn filled(&self) -> usize {
        ReceiveBuffer::filled(self)
    }

    fn spare(&mut self, max: usize) -> &mut [MaybeUninit<u8>] {
        self.unfilled(max)
    }

    unsafe fn advance(&mut self, n: usize) {
        // SAFETY: the caller wrote the first `n` bytes of what `spare` returned, which is what
        // `unfilled` returned.
        unsafe { ReceiveBuffer::advance(self, n) }
    }
}
