//! The kill -9 fault harness through the Kafka listener: an idempotent, acks=all confluent-kafka
//! producer writes sequenced records to six partitions while the broker is killed with -9 and
//! restarted, again and again, at random moments; then every acknowledged record must be
//! stored exactly once, in order, at the offset its acknowledgement gave
//! (`tests/kafka/crash_producer.py` checks). `SPATE_CRASH_CYCLES` runs the long form (the CI
//! form runs 20 cycles); `SPATE_TEST_SEED` replays a run's kill moments.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::scripts::{kafka_dir, require_pip_confluent, serial};
use common::Broker;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn kill_9_under_an_idempotent_producer_loses_and_duplicates_nothing() {
    let python = require_pip_confluent();
    let _serial = serial();
    let cycles = env_or("SPATE_CRASH_CYCLES", 20);
    let mut rng = env_or("SPATE_TEST_SEED", 0x5eed_4b1d);
    let dir = tempfile::tempdir().unwrap();
    let stop_file = dir.path().join("stop");
    // Up to a second per cycle, then the flush and the read-back.
    let budget = Duration::from_secs(cycles + 150);
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut producer = Command::new(&python)
        .arg("crash_producer.py")
        .current_dir(kafka_dir())
        .env("SPATE_KAFKA", &broker.kafka_addr)
        .env("SPATE_TOPIC", "crash")
        .env("SPATE_STOP_FILE", &stop_file)
        .env("SPATE_CRASH_BUDGET_SECS", budget.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the producer script");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(producer.stdout.take().unwrap()));
    let stderr = drain(Box::new(producer.stderr.take().unwrap()));
    // Let it create the topic and get going before the first crash.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 700));
        broker.kill9();
        broker.restart();
    }
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop_file, b"stop").unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let deadline = deadline.max(Instant::now() + budget);
    let status = loop {
        if let Some(status) = producer.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = producer.kill();
            let _ = producer.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let passed = status.is_some_and(|s| s.success());
    assert!(
        passed,
        "after {cycles} kill -9 cycles the producer script {status:?}\n--- stdout\n{stdout}\n\
         --- stderr (its end)\n{}\n--- broker stderr\n{}",
        &stderr[stderr.char_indices().rev().nth(4000).map_or(0, |(i, _)| i)..],
        broker.stderr()
    );
    println!("{cycles} kill -9 cycles\n{stdout}");
}
