//! A native request frame as the server reads it: the header, then the body decoders of every
//! API, then the produce payload's validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::native::frame::{FrameHeader, FRAME_HEADER_BYTES};
use spate::native::messages::{
    decode, CommitOffsetsRequest, CreateTopicRequest, FetchRequest, JoinGroupRequest,
    MetadataRequest, ProduceRequest, SyncGroupRequest,
};
use spate::record::batch::validate_native_payload;

fuzz_target!(|data: &[u8]| {
    let Some(raw) = data.get(..FRAME_HEADER_BYTES) else { return };
    let Ok(raw): Result<&[u8; FRAME_HEADER_BYTES], _> = raw.try_into() else { return };
    let _ = FrameHeader::parse(raw, 1 << 20);
    // Bodies arrive in 16-aligned buffers.
    let mut body = rkyv::util::AlignedVec::<16>::new();
    body.extend_from_slice(&data[FRAME_HEADER_BYTES..]);
    let _ = decode::<FetchRequest>(&body);
    let _ = decode::<MetadataRequest>(&body);
    let _ = decode::<CreateTopicRequest>(&body);
    let _ = decode::<JoinGroupRequest>(&body);
    let _ = decode::<SyncGroupRequest>(&body);
    let _ = decode::<CommitOffsetsRequest>(&body);
    if let Ok(request) = decode::<ProduceRequest>(&body) {
        let _ = validate_native_payload(&body, &request.batch);
    }
});
