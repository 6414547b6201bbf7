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

#[cfg(test)]
mod tests {
    use futures_lite::io::AsyncReadExt;
    use glommio::net::TcpListener;

    use super::*;
    use crate::log::partition::tests::{in_partition_dir, open};
    use crate::native::exchange::{answer_with, Response};
    use crate::native::frame::{FrameHeader, FLAG_ERROR, FRAME_HEADER_BYTES};
    use crate::native::messages::ErrorCode;

    /// What a scripted leader sends for one request, given its id: a frame's bytes.
    type Answer = Box<dyn FnOnce(u64) -> Vec<u8>>;

    /// A leader that reads each request whole and sends the next of `script`'s answers, then
    /// closes the connection. Its address.
    fn scripted_leader(script: Vec<Answer>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        glommio::spawn_local(async move {
            let mut stream = listener.accept().await.expect("accept");
            for answer in script {
                let mut raw = [0u8; FRAME_HEADER_BYTES];
                stream.read_exact(&mut raw).await.expect("a request's header");
                let header = FrameHeader::parse(&raw, u32::MAX).expect("a request");
                let mut body = vec![0u8; header.body_len()];
                stream.read_exact(&mut body).await.expect("a request's body");
                stream.write_all(&answer(header.request_id.get())).await.expect("an answer");
            }
        })
        .detach();
        address
    }

    fn bytes_of(response: Response) -> Vec<u8> {
        let mut frame = Vec::new();
        futures_lite::future::block_on(response.write_to(&mut frame)).expect("into memory");
        frame
    }

    /// Answers with `answers`, `data` as the frame's data, to whichever request it is asked.
    fn answering(answers: Vec<ReplicaFetchAnswer>, data: Vec<Vec<u8>>) -> Answer {
        let response = ReplicaFetchResponse { error: ErrorBody::none(), partitions: answers };
        Box::new(move |id| {
            let data = data.into_iter().map(Bytes::from).collect();
            bytes_of(answer_with(Api::ReplicaFetch, id, &response, data))
        })
    }

    fn answer(partition: u32, bytes: usize) -> ReplicaFetchAnswer {
        ReplicaFetchAnswer {
            topic: "t".into(),
            partition,
            error: ErrorBody::none(),
            high_watermark: 0,
            log_start: 0,
            log_end: 0,
            diverging_epoch: -1,
            diverging_end_offset: 0,
            bytes: bytes as u64,
        }
    }

    fn request() -> ReplicaFetchRequest {
        ReplicaFetchRequest {
            follower: 2,
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            partitions: Vec::new(),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn section_bytes(section: &Section) -> Vec<u8> {
        section.with_bytes(<[u8]>::to_vec).expect("a run not yet written")
    }

    fn run<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce() -> F) {
        let test = test();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test);
    }

    /// Each answer's entries land in the buffer its log handed out when it is the answer's size,
    /// else in bytes of their own, in answer order; the stream is then in step for the next
    /// fetch.
    #[test]
    fn entries_are_received_into_the_buffers_given_or_into_bytes_of_their_own() {
        in_partition_dir(|dir| async move {
            let log = open(&dir, 1 << 20).await;
            let entries = vec![pattern(5000, 1), pattern(300, 2), pattern(7000, 3)];
            let answers = vec![answer(0, 5000), answer(1, 300), answer(2, 7000)];
            let address = scripted_leader(vec![
                answering(answers, entries.clone()),
                answering(vec![answer(0, 10)], vec![pattern(10, 4)]),
            ]);
            let mut stream =
                ReplicaStream::connect(&address, Duration::from_secs(5)).await.expect("connect");
            let place = |answer: &ReplicaFetchAnswer| match answer.partition {
                0 => log.receive_buffer(answer.bytes as usize),
                // A buffer with room for one byte more than the answer brings is not used.
                2 => log.receive_buffer(answer.bytes as usize + 1),
                _ => None,
            };
            let (response, sections) = stream.fetch(&request(), place).await.expect("answered");
            assert_eq!(response.partitions.len(), 3);
            assert!(matches!(sections[0], EntryData::InPlace { .. }), "placed in its buffer");
            assert!(matches!(sections[1], EntryData::Shared(_)), "no buffer given");
            assert!(matches!(sections[2], EntryData::Shared(_)), "a buffer of the wrong size");
            let received: Vec<_> = sections.iter().map(section_bytes).collect();
            assert_eq!(received, entries);

            let (_, sections) = stream.fetch(&request(), place).await.expect("the next answer");
            assert_eq!(sections.iter().map(section_bytes).collect::<Vec<_>>(), [pattern(10, 4)]);
            log.close().await;
        });
    }

    /// A leader's refusal without data comes back as its error code, and leaves the stream in
    /// step: the next fetch is answered.
    #[test]
    fn a_refusal_without_data_is_the_leaders_error_and_the_stream_stays_in_step() {
        run(|| async {
            let refused = ReplicaFetchResponse {
                error: ErrorBody::new(ErrorCode::FencedLeaderEpoch, "epoch 3 is past"),
                partitions: Vec::new(),
            };
            let address = scripted_leader(vec![
                Box::new(|id| {
                    let code = ErrorCode::NotLeaderOrFollower;
                    bytes_of(Response::error(Api::ReplicaFetch as u8, id, code, "not leading"))
                }),
                Box::new(move |id| {
                    bytes_of(answer_with(Api::ReplicaFetch, id, &refused, Vec::new()))
                }),
                answering(vec![answer(7, 100)], vec![pattern(100, 5)]),
            ]);
            let mut stream =
                ReplicaStream::connect(&address, Duration::from_secs(5)).await.expect("connect");
            let first = stream.fetch(&request(), |_| None).await.err();
            assert_eq!(first.and_then(|e| e.code()), Some(ErrorCode::NotLeaderOrFollower));
            let second = stream.fetch(&request(), |_| None).await.err();
            assert_eq!(second.and_then(|e| e.code()), Some(ErrorCode::FencedLeaderEpoch));
            let (response, sections) = stream.fetch(&request(), |_| None).await.expect("answered");
            assert_eq!(response.partitions[0].partition, 7);
            assert_eq!(sections.iter().map(section_bytes).collect::<Vec<_>>(), [pattern(100, 5)]);
        });
    }

    /// Answers that leave the stream out of step with the leader are errors that name what was
    /// wrong, so the fetcher drops the connection: one to another request, a refusal carrying
    /// data, answers that do not add up to the frame's data, a frame cut short.
    #[test]
    fn answers_out_of_step_with_the_request_are_errors_that_say_why() {
        run(|| async {
            let refusal = ErrorBody::new(ErrorCode::NotLeaderOrFollower, "not leading");
            let refusal_with_data = {
                let refusal = refusal.clone();
                Box::new(move |id| {
                    let meta = encode(&refusal);
                    let data = vec![Bytes::from(pattern(64, 6))];
                    bytes_of(Response::new(Api::ReplicaFetch as u8, FLAG_ERROR, id, &meta, data))
                }) as Answer
            };
            let refused_response_with_data = Box::new(move |id| {
                let response = ReplicaFetchResponse { error: refusal, partitions: Vec::new() };
                let data = vec![Bytes::from(pattern(64, 7))];
                bytes_of(answer_with(Api::ReplicaFetch, id, &response, data))
            }) as Answer;
            let cut_short = Box::new(|id| {
                let response = ReplicaFetchResponse {
                    error: ErrorBody::none(),
                    partitions: vec![answer(0, 4000)],
                };
                let data = vec![Bytes::from(pattern(4000, 8))];
                let mut frame = bytes_of(answer_with(Api::ReplicaFetch, id, &response, data));
                frame.truncate(frame.len() - 1000);
                frame
            }) as Answer;
            let cases: Vec<(Answer, &str)> = vec![
                (
                    Box::new(|id| {
                        let response =
                            ReplicaFetchResponse { error: ErrorBody::none(), partitions: vec![] };
                        bytes_of(answer_with(Api::ReplicaFetch, id + 1, &response, Vec::new()))
                    }),
                    "protocol error: answer to request 2 where 1 was asked",
                ),
                (refusal_with_data, "protocol error: a refusal with 64 bytes of data"),
                (refused_response_with_data, "protocol error: a refusal with 64 bytes of data"),
                (
                    answering(vec![answer(0, 100), answer(1, 100)], vec![pattern(150, 9)]),
                    "protocol error: answers declaring Some(200) bytes in 150 of data",
                ),
                (cut_short, "I/O error: reading a fetch answer's entries"),
            ];
            for (answer, why) in cases {
                let address = scripted_leader(vec![answer]);
                let mut stream = (ReplicaStream::connect(&address, Duration::from_secs(5)).await)
                    .expect("connect");
                let error = stream.fetch(&request(), |_| None).await.err().map(|e| e.to_string());
                let error = error.unwrap_or_default();
                assert!(error.starts_with(why), "expected {why:?}, got {error:?}");
            }
        });
    }
}
