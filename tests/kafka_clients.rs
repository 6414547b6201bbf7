//! Real Kafka clients against the real binary's Kafka listener: kcat and confluent-kafka
//! (librdkafka 2.0.2, Debian's), confluent-kafka from PyPI (a current librdkafka), kafka-python
//! 3.x and kafkajs 2.2.4. Each test starts a broker with three partitions per topic and runs one
//! script from tests/kafka/ (which prints what it checks and exits non-zero on any mismatch).
//! `.ci/run` installs the clients with tests/kafka/install-clients.sh; a missing client fails the
//! test rather than skipping it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::Broker;

const INSTALL: &str =
    "install it with `tests/kafka/install-clients.sh` as root (.ci/run installs it)";

/// The scripts budget themselves to 60 s; this only catches a script that hangs anyway.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// One client at a time: each runs a broker pinned to the same cores plus a client that wants
/// CPU too, and the scripts' time budgets assume they are not starved.
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

/// Starts a broker, runs `program args` from tests/kafka/ with SPATE_KAFKA and SPATE_TOPIC set,
/// and fails with the script's output and the broker's log unless the script succeeds.
fn run_script(name: &str, program: &str, args: &[&str]) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // A short first-rebalance delay keeps the group consumers' runs quick.
    let settings = ["--set", "num.partitions=3", "--set", "group.initial.rebalance.delay.ms=300"];
    let broker = Broker::start(&dir.path().join("data"), &settings);
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(kafka_dir())
        .env("SPATE_KAFKA", &broker.kafka_addr)
        .env("SPATE_TOPIC", name.replace('_', "-"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot run `{program}`: {e}: {INSTALL}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
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
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let outcome = match status {
        Some(s) if s.success() => {
            println!("{name}: passed in {:.1?}\n{stdout}", started.elapsed());
            return;
        }
        Some(s) => format!("exited with {s}"),
        None => format!("was killed after {SCRIPT_TIMEOUT:?}"),
    };
    panic!(
        "{name} ({program} {args:?}) {outcome} after {:.1?}\n\
         --- script stdout\n{stdout}\n--- script stderr\n{stderr}\n--- broker stderr\n{}",
        started.elapsed(),
        broker.stderr()
    );
}

#[test]
fn kcat() {
    require("kcat", "kcat", &["-V"]);
    run_script("kcat_roundtrip", "bash", &["kcat_roundtrip.sh"]);
}

#[test]
fn confluent_kafka_debian() {
    require(
        "Debian's python3-confluent-kafka (for /usr/bin/python3)",
        "/usr/bin/python3",
        &["-c", "import confluent_kafka"],
    );
    run_script("confluent_debian", "/usr/bin/python3", &["confluent_roundtrip.py"]);
}

#[test]
fn confluent_kafka_pip() {
    let python = pip_python();
    require(
        "confluent-kafka 2.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, confluent_kafka as c; sys.exit(int(c.__version__.split('.')[0]) < 2)"],
    );
    run_script("confluent_pip", &python, &["confluent_roundtrip.py"]);
}

#[test]
fn kafka_python() {
    let python = pip_python();
    require(
        "kafka-python 3.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, kafka; sys.exit(int(kafka.__version__.split('.')[0]) < 3)"],
    );
    run_script("kafka_python_roundtrip", &python, &["kafka_python_roundtrip.py"]);
}

/// Producers (plain and idempotent), admin, and a group consumer reading everything back.
#[test]
fn kafkajs() {
    require("kafkajs 2.2.4 (npm, in tests/kafka/node)", "node", &[
        "-e",
        "process.exit(require('./node/node_modules/kafkajs/package.json').version === '2.2.4' ? 0 : 1)",
    ]);
    run_script("kafkajs_roundtrip", "node", &["node/kafkajs_roundtrip.js"]);
}
