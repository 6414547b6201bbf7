//! Native frames at the byte level, for tests that send what the client library never would.

use spate::native::frame::{Api, FrameHeader, FRAME_HEADER_BYTES};
use spate::native::messages::{encode, MetadataRequest};
use zerocopy::IntoBytes;

/// A frame with the given meta and data, and a correct header unless the caller changes it.
pub fn frame(api: u8, request_id: u64, meta: &[u8], data: &[u8], data_crc: u32) -> Vec<u8> {
    let header = FrameHeader::new(api, 0, request_id, meta.len(), data.len(), data_crc);
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(meta);
    out.resize(FRAME_HEADER_BYTES + header.padded_meta_len(), 0);
    out.extend_from_slice(data);
    out
}

/// A Metadata request for every topic.
pub fn metadata_frame(request_id: u64) -> Vec<u8> {
    let request = MetadataRequest { topics: None, with_offsets: false, allow_auto_create: false };
    frame(Api::Metadata as u8, request_id, &encode(&request), &[], 0)
}
