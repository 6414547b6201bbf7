//! Several brokers as one cluster: real `spate` processes on loopback, each a controller voter,
//! electing an active controller over the native protocol, registering, heartbeating, being
//! fenced when silent, stopping cleanly with a controlled shutdown, and surviving the active
//! controller's `kill -9`.
//!
//! On a 2-core machine each broker gets one shard on alternating cores, and one of them two
//! shards: what reaches that broker's shard 1 (many of the status requests, each on a new
//! connection, and its peers' links when the kernel places them there) is forwarded to the voter
//! on shard 0, and its views must agree with the others'. One cluster runs at a time
//! (`CLUSTER`), on ports below the kernel's ephemeral range so that no client connection can
//! take them while a broker is down.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::kafka_wire::Conn;
use common::{run, scripts, Broker, BINARY};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
use spate::client::Client;
use spate::native::messages::ClusterStatus;

/// One cluster at a time: they share the machine's two cores and a port range.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Short, so the tests see fencing soon; the heartbeat well inside it.
const SESSION_TIMEOUT_MS: u64 = 3_000;
const HEARTBEAT_MS: u64 = 300;
/// How long the cluster gets to reach what a test waits for.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    brokers: Vec<Broker>,
    dir: tempfile::TempDir,
    /// Node `n` listens on `base + 2(n-1)` (native) and the port after (Kafka).
    base: u16,
}

/// Brokers 1 to 3 are the voters; 4 joins through them.
const VOTERS: u16 = 3;
const NODES_MAX: u16 = 4;

/// `count` free ports in a row below 32768 (two per broker), found by binding them.
fn port_base(count: u16) -> u16 {
    let start = 20_000 + (std::process::id() % 500) as u16 * 20;
    (0..100)
        .map(|step| 20_000 + (start - 20_000 + step * 97) % 12_000)
        .find(|base| {
            (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        })
        .expect("free ports below 32768")
}

impl Cluster {
    /// Three brokers, nodes 1 to 3, all voters. Node 3 runs two shards.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = port_base(2 * NODES_MAX);
        let mut cluster = Cluster { brokers: Vec::new(), dir, base };
        for n in 1..=VOTERS {
            let data_dir = cluster.dir.path().join(format!("node{n}"));
            let broker = cluster.start_node(n, &data_dir);
            cluster.brokers.push(broker);
        }
        cluster
    }

    fn native(&self, n: u16) -> String {
        format!("127.0.0.1:{}", self.base + 2 * (n - 1))
    }

    /// Starts node `n` of this cluster on `data_dir`: one shard on core 0 or 1 by its parity,
    /// node 3 two.
    fn start_node(&self, n: u16, data_dir: &Path) -> Broker {
        let kafka = format!("127.0.0.1:{}", self.base + 2 * (n - 1) + 1);
        let voters: Vec<String> = (1..=VOTERS).map(|v| format!("{v}@{}", self.native(v))).collect();
        let voters = format!("controller.quorum.voters={}", voters.join(","));
        let session = format!("broker.session.timeout.ms={SESSION_TIMEOUT_MS}");
        let heartbeat = format!("broker.heartbeat.interval.ms={HEARTBEAT_MS}");
        let node = format!("node.id={n}");
        let cores = match n {
            3 => "0-1",
            n if n % 2 == 1 => "0",
            _ => "1",
        };
        let args = ["--set", &node, "--set", &voters, "--set", &session, "--set", &heartbeat];
        Broker::start_at(data_dir, (&self.native(n), &kafka), cores, &args)
    }

    fn broker(&mut self, node: i32) -> &mut Broker {
        &mut self.brokers[node as usize - 1]
    }

    fn status(&self, node: i32) -> Result<ClusterStatus, String> {
        status_at(&self.brokers[node as usize - 1].addr)
    }

    /// Waits until every broker in `asked` reports the same active controller and brokers,
    /// and `check` holds for that view; returns it.
    fn settle(
        &self,
        asked: &[i32],
        what: &str,
        check: impl Fn(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let views: Vec<Result<ClusterStatus, String>> =
                asked.iter().map(|n| self.status(*n)).collect();
            if let Some(Ok(first)) = views.first() {
                let same = |v: &Result<ClusterStatus, String>| {
                    v.as_ref().is_ok_and(|v| {
                        let same = (&v.leader, &v.brokers, &v.cluster_id)
                            == (&first.leader, &first.brokers, &first.cluster_id);
                        check(v) && same
                    })
                };
                if views.iter().all(same) {
                    return first.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never reached: {what}; the last views: {views:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn state(status: &ClusterStatus, node: i32) -> Option<(&'static str, u64)> {
    let broker = status.brokers.iter().find(|b| b.node.0 == node)?;
    let state = match (broker.fenced, broker.shut_down) {
        (false, _) => "live",
        (true, true) => "shut down",
        (true, false) => "fenced",
    };
    Some((state, broker.broker_epoch))
}

/// A new idempotent producer's id from the broker's Kafka listener.
/// Asked again, as clients do, while the broker answers COORDINATOR_NOT_AVAILABLE (a change of
/// controller while it asks for a block, say).
fn producer_id(broker: &Broker) -> i64 {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let mut conn = Conn::open(&broker.kafka_addr);
        let init: InitProducerIdResponse =
            conn.call(ApiKey::InitProducerId, 1, &InitProducerIdRequest::default());
        match init.error_code {
            0 => return init.producer_id.0,
            15 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            code => panic!("InitProducerId on {}: error {code}", broker.kafka_addr),
        }
    }
}

/// The cluster as the broker at `addr` sees it; a broker that does not answer in a few seconds
/// is an error, not a hung test.
fn status_at(addr: &str) -> Result<ClusterStatus, String> {
    let addr = addr.to_string();
    run(|| async move {
        let asked = async {
            let client = Client::connect(&addr).await.map_err(|e| e.to_string())?;
            client.cluster_status().await.map_err(|e| e.to_string())
        };
        let timed_out = async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            Err(format!("{addr} did not answer in 5 s"))
        };
        futures_lite::future::or(asked, timed_out).await
    })
}

fn all_live(status: &ClusterStatus, nodes: &[i32]) -> bool {
    nodes.iter().all(|n| state(status, *n).is_some_and(|(s, _)| s == "live"))
}

#[test]
fn three_brokers_elect_a_controller_fence_the_silent_and_survive_its_crash() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    let first =
        cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    assert_eq!(first.voters.iter().map(|v| v.0).collect::<Vec<_>>(), all);
    // The first controller formed the cluster; every data directory records it.
    let cluster_id = first.cluster_id.expect("the cluster is formed");
    for node in all {
        let dir = &cluster.broker(node).data_dir;
        let identity = std::fs::read_to_string(dir.join("meta.properties")).expect("identity");
        assert!(identity.contains(&format!("cluster.id={cluster_id}\n")), "{identity}");
        assert!(identity.contains(&format!("node.id={node}\n")), "{identity}");
    }
    for b in &first.brokers {
        let addr = &cluster.brokers[b.node.0 as usize - 1].addr;
        assert_eq!(format!("{}:{}", b.endpoints.native.0, b.endpoints.native.1), *addr);
    }

    // Brokers started at once hand out producer ids from blocks the controller gave each: no
    // two alike (before, each derived them from its start time).
    let ids: Vec<i64> =
        all.iter().map(|n| producer_id(&cluster.brokers[*n as usize - 1])).collect();
    // Each from its own block of 1000, the blocks the first few the cluster handed out.
    let blocks: std::collections::BTreeSet<i64> = ids.iter().map(|id| id / 1000).collect();
    assert_eq!(blocks.len(), ids.len(), "brokers share a block of producer ids: {ids:?}");
    assert!(ids.iter().all(|id| (0..10_000).contains(id)), "not from the controller: {ids:?}");

    // kill -9 of the active controller's broker: another voter takes over, and the dead
    // broker is fenced once its session lapses.
    let controller = first.leader.expect("a leader").0;
    let epoch_before = state(&first, controller).expect("registered").1;
    let killed_at = Instant::now();
    cluster.broker(controller).kill9();
    let survivors: Vec<i32> = all.iter().copied().filter(|n| *n != controller).collect();
    let after = cluster
        .settle(&survivors, "a new controller", |s| s.leader.is_some_and(|l| l.0 != controller));
    let failover = killed_at.elapsed();
    let fenced = cluster.settle(&survivors, "the dead broker fenced", |s| {
        state(s, controller).is_some_and(|(state, _)| state == "fenced") && all_live(s, &survivors)
    });
    eprintln!(
        "controller failover: node {controller} killed, node {} active after {} ms, the dead \
         broker fenced after {} ms",
        after.leader.map_or(-1, |l| l.0),
        failover.as_millis(),
        killed_at.elapsed().as_millis()
    );
    assert!(fenced.term > first.term, "a new term: {} then {}", first.term, fenced.term);

    // It restarts and rejoins by itself, under a new registration.
    cluster.broker(controller).restart();
    let rejoined = cluster.settle(&all, "the restarted broker live again", |s| all_live(s, &all));
    let epoch_after = state(&rejoined, controller).expect("registered").1;
    assert!(
        epoch_after > epoch_before,
        "a new registration: epoch {epoch_before} then {epoch_after}"
    );

    // A clean stop tells the controller before the process ends: no session to wait out.
    let stopping = *survivors.last().expect("a survivor");
    cluster.broker(stopping).stop();
    let asked: Vec<i32> = all.iter().copied().filter(|n| *n != stopping).collect();
    // "shut down" comes only from its own request (silence would make it "fenced").
    let view = cluster.settle(&asked, "the stopped broker shut down", |s| {
        state(s, stopping).is_some_and(|(state, _)| state == "shut down")
    });

    // Every broker stopped and started again: the same cluster, from the metadata log.
    for node in asked.iter() {
        cluster.broker(*node).stop();
    }
    let before_restart = view;
    for node in all {
        cluster.broker(node).restart();
    }
    // The last to stop could not have its controlled shutdown committed (no quorum left), so
    // the log may still show it live: wait for every broker's new registration.
    let registered_anew = |s: &ClusterStatus| {
        all.iter().all(|n| match (state(&before_restart, *n), state(s, *n)) {
            (Some((_, before)), Some(("live", after))) => after > before,
            _ => false,
        })
    };
    let again = cluster.settle(&all, "every broker registered anew", registered_anew);
    assert!(again.applied > before_restart.applied, "the log replayed and grew");
    assert_eq!(again.cluster_id, Some(cluster_id), "the same cluster");
    // Blocks come from the log: after the restart, none of the earlier ids again.
    let after: Vec<i64> =
        all.iter().map(|n| producer_id(&cluster.brokers[*n as usize - 1])).collect();
    assert!(
        after.iter().all(|id| !ids.contains(id)),
        "ids again after a restart: {ids:?} {after:?}"
    );

    // A fourth broker, not a voter, joins through the voters.
    let node4 = cluster.dir.path().join("node4");
    let fourth = cluster.start_node(4, &node4);
    cluster.brokers.push(fourth);
    let all4 = [1, 2, 3, 4];
    // It follows the metadata log: its view is the voters'.
    let _ =
        cluster.settle(&all4, "the fourth broker live, seen alike by all", |s| all_live(s, &all4));
    // Unchanged Kafka admin clients see the same cluster through every broker: kafka-python's
    // describe_cluster (DescribeCluster) the whole membership and controller; confluent-kafka's
    // (librdkafka asks Metadata, which describes the answering broker alone until topics go
    // through the controller) the same cluster id.
    let python = scripts::require_pip_confluent();
    scripts::require_kafka_python();
    let id = format!("\"cluster_id\": \"{cluster_id}\"");
    // An election between two of the four runs changes the controller they name: all four are
    // asked again then, until they agree.
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let views: Vec<(String, String)> = cluster
            .brokers
            .iter()
            .map(|broker| {
                let printed =
                    scripts::run_script(broker, "unused", &python, &["describe_cluster.py"])
                        .unwrap_or_else(|e| {
                            panic!("describe_cluster through {}: {e}", broker.kafka_addr)
                        });
                let line = |client: &str| {
                    let tag = format!("\"client\": \"{client}\"");
                    printed.lines().find(|l| l.contains(&tag)).unwrap_or_default().to_string()
                };
                (line("kafka-python"), line("confluent-kafka"))
            })
            .collect();
        let view = cluster.status(1).expect("status");
        let whole = &views[0].0;
        let agreed = views.iter().all(|(k, _)| k == whole)
            && view.leader.is_some_and(|l| whole.contains(&format!("\"controller\": {}", l.0)))
            && cluster.brokers.iter().all(|broker| {
                let (host, port) = broker.kafka_addr.rsplit_once(':').expect("host:port");
                whole.contains(&format!("\"{host}\", {port}"))
            });
        if agreed {
            assert!(views.iter().all(|(k, c)| k.contains(&id) && c.contains(&id)), "{views:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "the clients never agreed: {views:#?}");
    }

    // A broker whose data directory belongs to another cluster is refused and stops: node 4's
    // directory replaced by one that formed a cluster of its own.
    let foreign = cluster.dir.path().join("foreign");
    let mut alone = Broker::start(&foreign, &["--set", "node.id=4"]);
    let deadline = Instant::now() + SETTLE_WAIT;
    let joined = |dir: &Path| {
        std::fs::read_to_string(dir.join("meta.properties"))
            .is_ok_and(|t| t.contains("cluster.id="))
    };
    while !joined(&foreign) {
        assert!(Instant::now() < deadline, "the lone broker never formed its cluster");
        std::thread::sleep(Duration::from_millis(50));
    }
    alone.stop();
    cluster.broker(4).stop();
    std::fs::remove_dir_all(&node4).expect("remove node 4's directory");
    std::fs::rename(&foreign, &node4).expect("move the foreign directory in");
    cluster.broker(4).restart_expecting_exit();
    let exit = cluster.broker(4).wait_for_exit(SETTLE_WAIT);
    let log = cluster.broker(4).stderr();
    assert!(!exit.success(), "a broker of another cluster served:\n{log}");
    assert!(log.contains(&format!("this is cluster {cluster_id}")), "{log}");
    let view = cluster.status(1).expect("status");
    assert_eq!(view.cluster_id, Some(cluster_id), "the cluster is unchanged");
}

#[test]
fn bad_cluster_settings_stop_the_broker_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (&["--set", "controller.quorum.voters=1@127.0.0.1"], "controller.quorum.voters"),
        (&["--set", "controller.quorum.voters=1@127.0.0.1:9,1@127.0.0.1:10"], "named twice"),
        (
            &["--set", "node.id=1", "--set", "controller.quorum.voters=1@127.0.0.1:9"],
            "native.advertised.listener",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:9",
                "--kafka-listener",
                "127.0.0.1:10",
                "--set",
                "node.id=1",
                "--set",
                "controller.quorum.voters=1@127.0.0.1:11",
            ],
            "controller.quorum.voters gives node 1 the address 127.0.0.1:11",
        ),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(BINARY)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run spate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!Path::new(&dir.path().join("__cluster_metadata")).exists(), "nothing started");
}

#[test]
fn a_local_cluster_starts_with_one_command_and_stops_together() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // Kafka on base..base+2, native on base+100..base+102.
    let base = (0..50)
        .map(|step| 21_000 + step * 211)
        .find(|base| {
            (0..3).all(|i| {
                [base + i, base + 100 + i]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            })
        })
        .expect("free ports below 32768");
    let parent = std::process::Command::new(BINARY)
        .args(["cluster", "local", "--brokers", "3", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--set", &format!("broker.heartbeat.interval.ms={HEARTBEAT_MS}")])
        .stdout(std::process::Stdio::piped())
        // In a process group of its own, as a command run in a terminal is.
        .process_group(0)
        .spawn()
        .expect("spawn spate cluster local");
    // Whatever fails below, the command is killed, and its brokers (PDEATHSIG) stop with it.
    let mut parent = KillOnDrop(parent);
    let native = format!("127.0.0.1:{}", base + 100);
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let status = status_at(&native);
        if status.as_ref().is_ok_and(|s| all_live(s, &[1, 2, 3]) && s.cluster_id.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "the local cluster never settled: {status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C (SIGINT to the terminal's process group) stops every broker, cleanly, and the
    // command with them.
    let group = format!("-{}", parent.0.id());
    let interrupted = std::process::Command::new("kill").args(["-INT", "--", &group]).status();
    assert!(interrupted.is_ok_and(|s| s.success()));
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = parent.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < stop_deadline, "spate cluster local did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut parent.0.stdout.take().expect("stdout"), &mut printed)
        .expect("read stdout");
    assert!(exit.success(), "{exit}: {printed}");
    let bootstrap = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2);
    assert!(printed.contains(&bootstrap), "{printed}");
    for node in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{node}.log")))
            .expect("a broker's log");
        assert!(log.contains("controlled shutdown"), "node {node} did not stop cleanly:\n{log}");
        assert!(!log.contains("second signal"), "node {node} was signalled twice:\n{log}");
        // The kernel may keep a dead broker's listener a moment (its io_uring's teardown).
        let port = base + 100 + node - 1;
        let closing = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < closing, "{port} still open");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_paused_controller_is_replaced_and_rejoins_when_it_resumes() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    let first =
        cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let paused = first.leader.expect("a leader").0;
    let pid = cluster.broker(paused).pid().to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill").args([name, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {name} {pid}");
    };
    // SIGSTOP: the process lives but says nothing, as a broker stuck in a long pause would. The
    // others elect another controller and fence it once its session lapses.
    signal("-STOP");
    let survivors: Vec<i32> = all.iter().copied().filter(|n| *n != paused).collect();
    let replaced =
        cluster.settle(&survivors, "another controller, the paused broker fenced", |s| {
            s.leader.is_some_and(|l| l.0 != paused)
                && state(s, paused).is_some_and(|(state, _)| state == "fenced")
        });
    // SIGCONT: it learns the newer term, leads nothing, heartbeats under its registration and is
    // live again, seeing what the others see.
    signal("-CONT");
    let resumed = cluster.settle(&all, "the resumed broker live again", |s| all_live(s, &all));
    assert!(
        resumed.term >= replaced.term,
        "terms go back: {} then {}",
        replaced.term,
        resumed.term
    );
    let epoch = |s: &ClusterStatus| state(s, paused).expect("registered").1;
    assert_eq!(epoch(&resumed), epoch(&first), "the same registration, unfenced");
}
