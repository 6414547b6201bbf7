//! Consumer groups with real Kafka clients against the real binary's Kafka listener: the classic
//! group protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup), committed
//! offsets (OffsetCommit, OffsetFetch, durable across a kill -9), and the group admin APIs
//! (ListGroups, DescribeGroups, DeleteGroups). Each test starts a broker with
//! `group.initial.rebalance.delay.ms=300` and runs one script from tests/kafka/ (which prints what
//! it checks, and `rebalance_ms=<n>` timings, and exits non-zero on any mismatch). A missing
//! client fails the test rather than skipping it; `.ci/run` installs the clients with
//! tests/kafka/install-clients.sh.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;

const INSTALL: &str =
    "install it with `tests/kafka/install-clients.sh` as root (.ci/run installs it)";

/// The scripts budget themselves to at most 80 s; this only catches a script that hangs anyway.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(100);

/// Broker settings for every test: a short initial rebalance delay (Kafka's default is 3 s).
const BROKER_ARGS: &[&str] =
    &["--set", "group.initial.rebalance.delay.ms=300", "--set", "num.partitions=3"];

/// One client at a time: group tests measure session timeouts and rebalances, and their time
/// budgets assume they are not starved by another broker and client on the same cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kafka_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("kafka")
}

/// The Python that has the PyPI clients: the venv install-clients.sh makes when `python3` is
/// Debian's own (externally managed), else `python3` from PATH.
fn pip_python() -> String {
    let venv = kafka_dir().join(".venv").join("bin").join("python3");
    if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".into()
    }
}

/// Fails the test unless `program args` runs and exits 0.
fn require(what: &str, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .current_dir(kafka_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("{what} is not installed (`{program} {args:?}` exited with {s}): {INSTALL}")
        }
        Err(e) => panic!("{what} is not installed (`{program}`: {e}): {INSTALL}"),
    }
}

fn require_pip_confluent() -> String {
    let python = pip_python();
    require(
        "confluent-kafka 2.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, confluent_kafka as c; sys.exit(int(c.__version__.split('.')[0]) < 2)"],
    );
    python
}

/// Runs `program args` from tests/kafka/ with SPATE_KAFKA and SPATE_TOPIC set; Ok(stdout) if it
/// exits 0, else Err with what went wrong and everything it printed.
fn run_script(
    broker: &Broker,
    topic: &str,
    program: &str,
    args: &[&str],
) -> Result<String, String> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(kafka_dir())
        .env("SPATE_KAFKA", &broker.kafka_addr)
        .env("SPATE_TOPIC", topic)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}: {INSTALL}"));
    // Drain into shared buffers: member processes a script started inherit its pipes, and if the
    // script is killed they may hold them open, so take what arrived rather than wait for EOF.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let filling = Arc::clone(&buffer);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                filling.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (reader, buffer)
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let join = |(reader, buffer): (std::thread::JoinHandle<()>, Arc<Mutex<Vec<u8>>>)| {
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut text = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
        if !reader.is_finished() {
            text.push_str("\n(output still open 10 s after the script ended)");
        }
        text
    };
    let (stdout, stderr) = (join(stdout), join(stderr));
    match status {
        Some(s) if s.success() => Ok(format!("passed in {:.1?}\n{stdout}", started.elapsed())),
        outcome => Err(format!(
            "({program} {args:?}) {} after {:.1?}\n--- script stdout\n{stdout}\n\
             --- script stderr\n{stderr}",
            match outcome {
                Some(s) => format!("exited with {s}"),
                None => format!("was killed after {SCRIPT_TIMEOUT:?}"),
            },
            started.elapsed()
        )),
    }
}

/// Starts a broker and runs one script against it; fails with the script's output and the
/// broker's log unless the script succeeds.
fn run_one(name: &str, program: &str, args: &[&str]) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), BROKER_ARGS);
    match run_script(&broker, &name.replace('_', "-"), program, args) {
        Ok(out) => println!("{name}: {out}"),
        Err(why) => panic!("{name} {why}\n--- broker stderr\n{}", broker.stderr()),
    }
}

/// Three confluent-kafka (PyPI) member processes: assignment, a SIGKILLed member's partitions
/// moving after its session timeout, a new member joining, no record skipped.
#[test]
fn members_confluent_pip() {
    let python = require_pip_confluent();
    run_one("groups_members_pip", &python, &["groups_members.py"]);
}

/// The same with Debian's confluent-kafka 1.7 (librdkafka 2.0.2).
#[test]
fn members_confluent_debian() {
    require(
        "Debian's python3-confluent-kafka (for /usr/bin/python3)",
        "/usr/bin/python3",
        &["-c", "import confluent_kafka"],
    );
    run_one("groups_members_debian", "/usr/bin/python3", &["groups_members.py"]);
}

/// kafka-python 3.x: two members, LeaveGroup hands everything to the other, a new consumer
/// resumes at the committed offsets.
#[test]
fn kafka_python() {
    let python = pip_python();
    require(
        "kafka-python 3.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, kafka; sys.exit(int(kafka.__version__.split('.')[0]) < 3)"],
    );
    run_one("groups_kafka_python", &python, &["groups_kafka_python.py"]);
}

/// Independent groups, auto.offset.reset, OffsetFetch with nothing committed, ListGroups,
/// DescribeGroups, DeleteGroups (confluent-kafka from PyPI).
#[test]
fn semantics_confluent_pip() {
    let python = require_pip_confluent();
    run_one("groups_semantics", &python, &["groups_semantics.py"]);
}

/// A kafkajs consumer group: two members, every record, commits, describeGroups, fetchOffsets.
#[test]
fn kafkajs() {
    require("kafkajs 2.2.4 (npm, in tests/kafka/node)", "node", &[
        "-e",
        "process.exit(require('./node/node_modules/kafkajs/package.json').version === '2.2.4' ? 0 : 1)",
    ]);
    run_one("kafkajs_group", "node", &["node/kafkajs_group.js"]);
}

/// Committed offsets survive kill -9: commit, crash, restart on the same data directory, and
/// the group resumes exactly at the committed offsets.
#[test]
fn commits_survive_kill9() {
    let python = require_pip_confluent();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), BROKER_ARGS);
    let topic = "groups-restart";
    let first_log = dir.path().join("broker-1.stderr");
    match run_script(&broker, topic, &python, &["groups_restart.py", "commit"]) {
        Ok(out) => println!("groups_restart commit: {out}"),
        Err(why) => panic!("groups_restart commit {why}\n--- broker stderr\n{}", broker.stderr()),
    }
    broker.kill9();
    broker.restart();
    match run_script(&broker, topic, &python, &["groups_restart.py", "resume"]) {
        Ok(out) => println!("groups_restart resume (after kill -9 and restart): {out}"),
        Err(why) => panic!(
            "groups_restart resume (after kill -9 and restart) {why}\n\
             --- broker stderr before the crash\n{}\n--- broker stderr after the restart\n{}",
            std::fs::read_to_string(&first_log).unwrap_or_default(),
            broker.stderr()
        ),
    }
}
