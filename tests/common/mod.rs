//! Test harness: starts the real `spate` binary on loopback with a temporary data directory,
//! and runs client code on a glommio executor.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod kafka_wire;
pub mod native_wire;
pub mod netns;
pub mod scripts;
pub mod small_fs;

use spate::client::{Client, ClientError, Fetched, Leaders};
use spate::native::messages::Acks;
use spate::record::{BatchBuilder, OwnedRecord};

pub const BINARY: &str = env!("CARGO_BIN_EXE_spate");

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    /// The Kafka listener.
    pub kafka_addr: String,
    pub data_dir: PathBuf,
    log_dir: PathBuf,
    args: Vec<String>,
    /// `--cores`: the CPUs its shards are pinned to.
    cores: String,
    /// Its log files are `<prefix>-<run>.stderr` (and `.stdout`) in `log_dir`.
    log_prefix: String,
    fixed_ports: bool,
    runs: usize,
    /// The network namespace it runs in (`ip netns exec`), if not the test's own.
    netns: Option<String>,
}

impl Broker {
    /// Starts a broker with two shards on `data_dir`, plus `extra` arguments.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Self::start_logging_in(data_dir, data_dir.parent().unwrap_or(data_dir), extra)
    }

    /// Like [`Broker::start`], with its output kept in `log_dir` (for a data directory on a
    /// filesystem the test fills up).
    pub fn start_logging_in(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Broker {
        let mut broker = Broker {
            child: None,
            addr: String::new(),
            kafka_addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            cores: cores(),
            log_prefix: "broker".to_string(),
            fixed_ports: false,
            runs: 0,
            netns: None,
        };
        broker.move_to_fresh_ports();
        broker.launch();
        broker
    }

    /// Starts a broker at fixed addresses (a cluster's members must know each other's before
    /// they start), its shards on `cores`, logging beside `data_dir`.
    pub fn start_at(data_dir: &Path, addrs: (&str, &str), cores: &str, extra: &[&str]) -> Broker {
        Self::start_at_in(None, data_dir, addrs, cores, extra)
    }

    /// The same, in network namespace `netns` when given (`netns::Netns`).
    pub fn start_at_in(
        netns: Option<String>,
        data_dir: &Path,
        addrs: (&str, &str),
        cores: &str,
        extra: &[&str],
    ) -> Broker {
        let mut broker = Broker {
            child: None,
            addr: addrs.0.to_string(),
            kafka_addr: addrs.1.to_string(),
            data_dir: data_dir.to_path_buf(),
            log_dir: data_dir.parent().unwrap_or(data_dir).to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            cores: cores.to_string(),
            // Brokers of one cluster log side by side, named by their data directories.
            log_prefix: format!(
                "broker-{}",
                data_dir.file_name().map_or("".into(), |n| n.to_string_lossy())
            ),
            fixed_ports: true,
            runs: 0,
            netns,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        // While a broker is down for a restart, its ports are free, and a client connection of
        // another test running beside this one can take one as its ephemeral port. Then the
        // broker cannot listen there: wait for the port to come free (clients of the test may
        // know only that port), and after a while move to fresh ports.
        for attempt in 0..30 {
            match self.launch_once() {
                Ok(()) => return,
                Err(log) if ports_taken(&log) && attempt < 29 => {
                    std::thread::sleep(Duration::from_millis(200));
                    // A cluster's members know each other's ports: those stay.
                    if attempt >= 15 && !self.fixed_ports {
                        self.move_to_fresh_ports();
                    }
                }
                Err(log) => panic!("broker did not start:\n{log}"),
            }
        }
    }

    /// Tests read `addr` and `kafka_addr` after each restart.
    fn move_to_fresh_ports(&mut self) {
        let port = free_port();
        // Two binds of port 0 in a row can return the same port; the listeners need two.
        let kafka_port = std::iter::repeat_with(free_port).find(|p| *p != port).unwrap_or(0);
        self.addr = format!("127.0.0.1:{port}");
        self.kafka_addr = format!("127.0.0.1:{kafka_port}");
    }

    /// Starts the process and waits until every shard listens.
    /// `Err` carries what it logged when it exits or does not listen in time.
    fn launch_once(&mut self) -> Result<(), String> {
        self.spawn();
        // The broker's own word, not a probe connection: a broker killed moments ago can still
        // listen on the ports for a while (the kernel releases its listeners when it tears down
        // the dead process's io_uring), and a probe would take that for this one.
        let shards: usize = (self.cores.split(','))
            .map(|part| match part.split_once('-') {
                Some((from, to)) => {
                    to.trim().parse::<usize>().unwrap() - from.trim().parse::<usize>().unwrap() + 1
                }
                None => 1,
            })
            .sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stderr().matches("listeners ready").count() < shards {
            self.exited_during_start()?;
            if Instant::now() > deadline {
                return Err(format!("not listening after 30 s:\n{}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited_during_start()
    }

    fn exited_during_start(&mut self) -> Result<(), String> {
        match self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            Some(status) => {
                self.child = None;
                Err(format!("broker exited with {status} during start:\n{}", self.stderr()))
            }
            None => Ok(()),
        }
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}-{}.stdout", self.log_prefix, self.runs))
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}-{}.stderr", self.log_prefix, self.runs))
    }

    /// Everything this run of the broker logged.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Where this run serves `/metrics` (a free port taken at start, as its log says).
    pub fn metrics_url(&self) -> String {
        let log = self.stderr();
        let at = log.find("metrics listener ready: ").expect("the broker serves /metrics");
        let rest = &log[at + "metrics listener ready: ".len()..];
        rest.split_whitespace().next().expect("an address").to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// SIGTERM, wait for a clean exit, and return what it printed on stdout.
    pub fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("broker running");
        let status =
            Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "broker exited with {status}:\n{}", self.stderr());
                break;
            }
            assert!(Instant::now() < deadline, "broker did not stop:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(self.stdout_path()).unwrap()
    }

    /// Waits (up to `within`) for the broker to exit by itself, and returns how it exited.
    pub fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("broker running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("broker still running after {within:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the broker again on the same directory and ports without waiting for it to
    /// listen: for a start the broker is expected to end by itself (see [`Self::wait_for_exit`]).
    pub fn restart_expecting_exit(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.spawn();
    }

    /// Starts the process, its output in this run's log files.
    fn spawn(&mut self) {
        self.runs += 1;
        let stdout = std::fs::File::create(self.stdout_path()).unwrap();
        let stderr = std::fs::File::create(self.stderr_path()).unwrap();
        // `ip netns exec` enters the namespace and execs the broker: the child is the broker.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, BINARY]);
                command
            }
            None => Command::new(BINARY),
        };
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.addr, "--kafka-listener", &self.kafka_addr])
            .args(["--cores", &self.cores])
            .args(["--metrics-listener", "127.0.0.1:0"])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn spate");
        self.child = Some(child);
    }

    /// Starts the broker again on the same directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.launch();
    }
}

/// Lines of each broker's log a failed test prints.
const LOG_TAIL_ON_FAILURE: usize = 60;

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test's logs go with its temporary directory: print what each broker did
        // last, so that a failure seen once can be read afterwards.
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_ON_FAILURE).collect();
            eprintln!("--- broker {}, the last {} lines of its log:", self.addr, tail.len());
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}

/// Whether a start failed on ports something else holds: a client's ephemeral port, or the
/// listeners of a broker killed moments ago (the broker's own check names those).
fn ports_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("is already listening")
}

/// A field of a process's /proc status in KiB, e.g. `VmRSS:` (resident) or `VmHWM:` (peak).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// For fault tests that need root (a mount, a cgroup): says why the fault cannot be set up and
/// lets the test skip, or fails it under `SPATE_REQUIRE_FAULT_FS=1` (set by `.ci/run`).
pub fn skip_without_privilege(what: &str, why: &str) {
    if std::env::var("SPATE_REQUIRE_FAULT_FS").as_deref() == Ok("1") {
        panic!("cannot {what}: {why}");
    }
    eprintln!("SKIPPED: cannot {what}: {why}");
}

/// The CPUs tests pin shards to: two shards when the machine has two CPUs.
pub fn cores() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        "0-1".into()
    } else {
        "0".into()
    }
}

/// A port free now and never handed out before in this test process. The tests of one binary
/// start brokers side by side: two asking at once could both be given a port the kernel freed a
/// moment ago, and two brokers would then both listen on it (SO_REUSEPORT, each checking before
/// the other bound it) and share each other's clients.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Runs `make()` on a glommio executor on this thread.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("client executor")
        .run(make())
}

/// A record whose bytes say where it belongs, to check what comes back.
pub fn record(partition: u32, seq: u64) -> OwnedRecord {
    OwnedRecord {
        key: Some(format!("p{partition}-k{}", seq % 7).into_bytes()),
        value: Some(
            format!("partition {partition} record {seq} {}", "x".repeat((seq % 200) as usize))
                .into_bytes(),
        ),
        headers: vec![(b"seq".to_vec(), seq.to_le_bytes().to_vec())],
        timestamp: 1_700_000_000_000 + seq as i64,
    }
}

pub fn batch_of(records: impl IntoIterator<Item = OwnedRecord>) -> BatchBuilder {
    let mut builder = BatchBuilder::default();
    records.into_iter().for_each(|r| builder.push(r));
    builder
}

/// Reads a partition from `from` to its high watermark.
pub async fn read_all(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
) -> Vec<(u64, OwnedRecord)> {
    read_all_with(from, |offset| client.fetch(topic, partition, offset, 1 << 20, 0)).await
}

/// The same, each fetch from the partition's leader of the moment: leadership may move while
/// it reads (a leader fenced, a preferred replica taking its partitions back).
pub async fn read_all_from_leaders(
    leaders: &Leaders,
    topic: &str,
    partition: u32,
    from: u64,
) -> Vec<(u64, OwnedRecord)> {
    read_all_with(from, |offset| {
        leaders.with_leader(topic, partition, move |client| async move {
            client.fetch(topic, partition, offset, 1 << 20, 0).await
        })
    })
    .await
}

async fn read_all_with<F, Fut>(from: u64, fetch: F) -> Vec<(u64, OwnedRecord)>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Fetched, ClientError>>,
{
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let fetched = fetch(offset).await.expect("fetch");
        for batch in fetched.batches().expect("valid batches") {
            for record in batch.records().filter(|r| r.offset >= offset) {
                out.push((record.offset, record.to_owned_record()));
            }
        }
        offset = out.last().map_or(offset, |(o, _)| o + 1);
        if offset >= fetched.high_watermark {
            return out;
        }
    }
}

pub async fn connect(broker: &Broker) -> Client {
    match Client::connect(&broker.addr).await {
        Ok(client) => client,
        Err(e) => panic!("connecting to the broker: {e:?}\nits log:\n{}", broker.stderr()),
    }
}

pub async fn produce(
    client: &Client,
    topic: &str,
    partition: u32,
    acks: Acks,
    records: Vec<OwnedRecord>,
) -> u64 {
    client
        .produce(topic, partition, acks, batch_of(records))
        .await
        .expect("produce")
        .unwrap_or(u64::MAX)
}
