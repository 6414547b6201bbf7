//! One native exchange: a request frame as the connection read it, and the response to it.
//!
//! Handlers take a [`RequestFrame`] and give back a [`Response`]; the connection loop in
//! `server.rs` reads the one and writes the other, so neither handlers nor groups depend on it.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};
use glommio::sync::StaticPermit;
use rkyv::util::AlignedVec;
use zerocopy::IntoBytes;

use crate::native::frame::{Api, FrameHeader, FLAG_ERROR, FLAG_RESPONSE, FRAME_HEADER_BYTES};
use crate::native::messages::{encode, ErrorBody, ErrorCode, Outcome};
use crate::record::ENTRY_HEADER_BYTES;
use crate::transport::write_coalesced;

/// Spare bytes before the meta in every body buffer: room for the entry header a produce
/// payload becomes, so the payload is stored without a copy.
pub const BODY_PREFIX_BYTES: usize = ENTRY_HEADER_BYTES;
/// A decoded request frame: the header and the body buffer (prefix, meta, padding, data).
pub struct RequestFrame {
    pub header: FrameHeader,
    pub body: AlignedVec<16>,
    pub received: Instant,
    /// This frame's share of the body budget, held until it is answered.
    _permit: StaticPermit,
}

impl RequestFrame {
    /// A frame read whole at `Instant::now()`, holding `permit` until it is answered.
    pub fn new(header: FrameHeader, body: AlignedVec<16>, permit: StaticPermit) -> Self {
        Self { header, body, received: Instant::now(), _permit: permit }
    }

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
    /// The error it answers with, when it is an error frame.
    error: Option<ErrorCode>,
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
        Self { head, data, reserved: None, woken_at: None, error: None }
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
        Self { error: Some(code), ..Self::new(api, FLAG_ERROR, request_id, &body, Vec::new()) }
    }

    /// The error it answers with, when it is an error frame.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error
    }

    /// When the fetch it answers was woken by new data, if it was.
    pub fn woken_at(&self) -> Option<Instant> {
        self.woken_at
    }

    pub async fn write_to<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> io::Result<()> {
        let chunks = std::iter::once(&self.head[..]).chain(self.data.iter().map(|c| &c[..]));
        write_coalesced(writer, chunks).await?;
        writer.flush().await
    }
}

/// A response carrying `body` as its meta.
pub(crate) fn answer<T: AnswerBody>(api: Api, request_id: u64, body: &T) -> Response {
    answer_with(api, request_id, body, Vec::new())
}

/// A response carrying `body` as its meta and `data` after it (entries, as stored).
pub(crate) fn answer_with<T: AnswerBody>(
    api: Api,
    request_id: u64,
    body: &T,
    data: Vec<Bytes>,
) -> Response {
    let response = Response::new(api as u8, 0, request_id, &encode(body), data);
    Response { error: body.error_code(), ..response }
}

/// What a response's meta can be: a body the codec writes, that says how the request went.
pub(crate) trait AnswerBody:
    Outcome
    + for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >
{
}

impl<T> AnswerBody for T where
    T: Outcome
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >
{
}

pub(crate) fn undecodable(api: Api, request_id: u64, why: String) -> Response {
    Response::error(
        api as u8,
        request_id,
        ErrorCode::InvalidRequest,
        format!("undecodable request body: {why}"),
    )
}

/// What a connection's requests leave for its end: the connection's number, and the broker
/// whose heartbeats this broker's controller took over it (node and broker epoch). When the
/// connection closes, the controller fences that broker at once if it last heard it over this
/// one (`Event::HeartbeatsLost`).
pub struct HeartbeatsSeen {
    pub connection: u64,
    pub last: std::cell::Cell<Option<(crate::types::NodeId, u64)>>,
}
