//! Running the client scripts of tests/kafka/ against a broker: the interpreter each needs, a
//! check that the client is installed (a missing one fails the test, with how to install it),
//! one test at a time, and the script's output and the broker's log when it fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Broker;

pub const INSTALL: &str =
    "install it with `tests/kafka/install-clients.sh` as root (.ci/run installs it)";

/// The scripts budget themselves to at most 80 s; this only catches a script that hangs anyway.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(100);

/// One client at a time: each runs a broker pinned to the same cores plus a client that wants
/// CPU too; group tests measure session timeouts and rebalances, and the scripts' time budgets
/// assume they are not starved.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the one-at-a-time lock while a test runs a broker and a client.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn kafka_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("kafka")
}

/// The Python that has the PyPI clients: the venv install-clients.sh makes when `python3` is
/// Debian's own (externally managed), else `python3` from PATH.
pub fn pip_python() -> String {
    let venv = kafka_dir().join(".venv").join("bin").join("python3");
    if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".into()
    }
}

/// Fails the test unless `program args` runs and exits 0.
pub fn require(what: &str, program: &str, args: &[&str]) {
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

pub fn require_pip_confluent() -> String {
    let python = pip_python();
    require(
        "confluent-kafka 2.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, confluent_kafka as c; sys.exit(int(c.__version__.split('.')[0]) < 2)"],
    );
    python
}

/// The Python with kafka-python 3.x (PyPI), checked to be installed.
pub fn require_kafka_python() -> String {
    let python = pip_python();
    require(
        "kafka-python 3.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, kafka; sys.exit(int(kafka.__version__.split('.')[0]) < 3)"],
    );
    python
}

/// Debian's Python with its confluent-kafka 1.7 (librdkafka 2.0.2), checked to be installed.
pub fn require_debian_confluent() -> &'static str {
    let python = "/usr/bin/python3";
    require(
        "Debian's python3-confluent-kafka (for /usr/bin/python3)",
        python,
        &["-c", "import confluent_kafka"],
    );
    python
}

/// Fails the test unless kafkajs 2.2.4 is installed in tests/kafka/node.
pub fn require_kafkajs() {
    require("kafkajs 2.2.4 (npm, in tests/kafka/node)", "node", &[
        "-e",
        "process.exit(require('./node/node_modules/kafkajs/package.json').version === '2.2.4' ? 0 : 1)",
    ]);
}

/// Runs `program args` from tests/kafka/ with SPATE_KAFKA and SPATE_TOPIC set; Ok(stdout) if it
/// exits 0, else Err with what went wrong and everything it printed.
pub fn run_script(
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

/// Starts a broker with `settings` and runs one script against it; fails with the script's
/// output and the broker's log unless the script succeeds.
pub fn run_one(name: &str, settings: &[&str], program: &str, args: &[&str]) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), settings);
    match run_script(&broker, &name.replace('_', "-"), program, args) {
        Ok(out) => println!("{name}: {out}"),
        Err(why) => panic!("{name} {why}\n--- broker stderr\n{}", broker.stderr()),
    }
}
