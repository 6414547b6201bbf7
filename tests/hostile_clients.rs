//! Clients that misbehave at scale, against the real binary: thousands of idle connections,
//! connections that pipeline thousands of requests and never read a response, and 2 GiB length
//! prefixes on both listeners. The broker closes the offenders it must, with a log line, keeps
//! serving a well-behaved client, and its peak memory stays bounded: the test prints the peak.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::kafka_wire::{batch, latest_offset, produce_request, produced, request, Conn};
use common::native_wire::{frame, metadata_frame};
use common::{connect, proc_status_kib, produce, read_all, record, run, Broker};
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use spate::native::frame::{Api, FrameHeader};
use spate::native::messages::{encode, Acks, FetchRequest};
use zerocopy::IntoBytes;

const TOPIC: &str = "hostile";
/// Requests each pipelining client tries to send without reading a response: tens of
/// megabytes, far more than the kernel's socket buffers hold.
const PIPELINED_REQUESTS: usize = 100_000;
/// Pipelining clients of each kind (Kafka produce, native fetch, native metadata).
const PIPELINERS: usize = 4;
/// The pipeliners' socket buffers: small, so that what the broker refuses to take shows up
/// as a blocked write rather than disappearing into the kernel's buffers.
const CLIENT_SOCKET_BUFFER_BYTES: libc::c_int = 16 * 1024;

fn fetch_frame(request_id: u64) -> Vec<u8> {
    let request = FetchRequest {
        topic: TOPIC.into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    };
    frame(Api::Fetch as u8, request_id, &encode(&request), &[], 0)
}

/// A size-prefixed Kafka Produce v8 (acks=1) of a small batch.
fn kafka_produce_frame(correlation_id: usize) -> Vec<u8> {
    let produce = produce_request(TOPIC, 1, batch(-1, -1, 0, 4));
    let body = request(ApiKey::Produce, 8, correlation_id as i32, &produce);
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Writes `frames` back to back and never reads; stops when the broker stops reading (the write
/// blocks past the timeout) or closes. Returns how many frames went out whole.
fn pipeline(addr: &str, frames: impl Iterator<Item = Vec<u8>>) -> (TcpStream, usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    shrink_socket_buffers(&stream);
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    for frame in frames {
        if stream.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
    }
    (stream, sent)
}

fn shrink_socket_buffers(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size = CLIENT_SOCKET_BUFFER_BYTES;
        // SAFETY: the descriptor is an open socket for the call, and the option value is a
        // c_int that outlives it, passed with its size.
        let done = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(done, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
}

/// This process's soft open-files limit (the broker inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap_or(1024)
}

#[test]
fn misbehaving_clients_at_scale_leave_memory_bounded_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let pid = broker.pid();
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic(TOPIC, 2, vec![]).await.unwrap();
        for seq in 0..64 {
            let records = (seq * 64..seq * 64 + 64).map(|s| record(0, s)).collect();
            produce(&client, TOPIC, 0, Acks::All, records).await;
        }
    });
    let before_kib = proc_status_kib(pid, "VmRSS:");

    // Thousands of connections that never send a byte, on both listeners (as many as this
    // process may open, leaving room for the rest of the test).
    let idle_count = 2_000.min(open_files_limit().saturating_sub(300));
    let idle: Vec<TcpStream> = (0..idle_count)
        .map(|i| {
            let addr = if i % 2 == 0 { &broker.addr } else { &broker.kafka_addr };
            TcpStream::connect(addr).unwrap()
        })
        .collect();

    // 2 GiB length prefixes: refused at once, the connection closed.
    let mut huge_kafka = TcpStream::connect(&broker.kafka_addr).unwrap();
    huge_kafka.write_all(&i32::MAX.to_be_bytes()).unwrap();
    let mut huge_native = TcpStream::connect(&broker.addr).unwrap();
    let header = FrameHeader::new(Api::Produce as u8, 0, 1, 64, (2u64 << 30) as usize - 64, 0);
    huge_native.write_all(header.as_bytes()).unwrap();
    for stream in [&mut huge_kafka, &mut huge_native] {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(stream, &mut rest);
    }

    // Pipeliners that never read: Kafka produces, native fetches of 1 MiB, native metadata.
    let started = Instant::now();
    let pipeliners: Vec<_> = (0..PIPELINERS)
        .flat_map(|_| {
            let (kafka, native) = (broker.kafka_addr.clone(), broker.addr.clone());
            let native_too = native.clone();
            [
                std::thread::spawn(move || {
                    pipeline(&kafka, (0..PIPELINED_REQUESTS).map(kafka_produce_frame))
                }),
                std::thread::spawn(move || {
                    pipeline(&native, (0..PIPELINED_REQUESTS as u64).map(fetch_frame))
                }),
                std::thread::spawn(move || {
                    pipeline(&native_too, (0..PIPELINED_REQUESTS as u64).map(metadata_frame))
                }),
            ]
        })
        .collect();
    let stuck: Vec<(TcpStream, usize)> =
        pipeliners.into_iter().map(|t| t.join().unwrap()).collect();
    let sent: Vec<usize> = stuck.iter().map(|(_, sent)| *sent).collect();
    assert!(
        sent.iter().all(|s| *s < PIPELINED_REQUESTS),
        "a pipelining client was never held back: {sent:?}"
    );

    // Meanwhile a well-behaved client is served on both listeners, and its data is intact.
    run(|| async {
        let client = connect(&broker).await;
        for seq in 0..50 {
            produce(&client, TOPIC, 1, Acks::All, vec![record(1, seq)]).await;
        }
        let read = read_all(&client, TOPIC, 1, 0).await;
        assert_eq!(read.len(), 50);
        assert!(read.iter().enumerate().all(|(i, (_, r))| *r == record(1, i as u64)));
    });
    let mut kafka = Conn::open(&broker.kafka_addr);
    let response: ProduceResponse =
        kafka.call(ApiKey::Produce, 8, &produce_request(TOPIC, -1, batch(-1, -1, 0, 4)));
    assert_eq!(produced(&response).0, 0);
    assert!(latest_offset(&mut kafka, TOPIC) > 0);

    let peak_kib = proc_status_kib(pid, "VmHWM:");
    let now_kib = proc_status_kib(pid, "VmRSS:");
    println!(
        "hostile clients: {idle_count} idle connections, {} pipeliners held back after {:?} \
         (requests sent per client: {sent:?}); broker RSS {} MiB before, {} MiB now, peak {} MiB",
        stuck.len(),
        started.elapsed(),
        before_kib / 1024,
        now_kib / 1024,
        peak_kib / 1024,
    );
    // Per connection the broker holds at most 64 requests, 64 MiB of request bodies and 64 MiB
    // of reserved fetch responses; these clients send little, so the peak must stay far below
    // what their requests would take if queued without bound.
    assert!(peak_kib < 512 * 1024, "the broker's memory peaked at {} MiB", peak_kib / 1024);

    drop(stuck);
    drop(idle);
    let log = broker.stderr();
    assert!(log.contains("socket.request.max.bytes"), "no log line for the 2 GiB prefixes:\n{log}");
}
