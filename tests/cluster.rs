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
use common::netns::Netns;
use common::{run, scripts, Broker, BINARY};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
use spate::client::{Client, GroupConfig, GroupConsumer, OffsetReset};
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
    /// Settings every broker of this cluster gets on top of the tests' own.
    settings: Vec<String>,
    /// Each broker in a network namespace of its own, when a test cuts them off.
    netns: Option<Netns>,
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
        Cluster::start_with(&[])
    }

    /// The same, each broker with `settings` (`key=value`) too.
    fn start_with(settings: &[&str]) -> Cluster {
        Cluster::start_in(settings, None)
    }

    /// The same, each broker in its namespace of `netns` when given.
    fn start_in(settings: &[&str], netns: Option<Netns>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = port_base(2 * NODES_MAX);
        let settings = settings.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster { brokers: Vec::new(), dir, base, settings, netns };
        for n in 1..=VOTERS {
            let data_dir = cluster.dir.path().join(format!("node{n}"));
            let broker = cluster.start_node(n, &data_dir);
            cluster.brokers.push(broker);
        }
        cluster
    }

    /// Where node `n` is reached: loopback, or its namespace's address.
    fn host(&self, n: u16) -> String {
        self.netns.as_ref().map_or("127.0.0.1".to_string(), |netns| netns.address(n))
    }

    fn native(&self, n: u16) -> String {
        format!("{}:{}", self.host(n), self.base + 2 * (n - 1))
    }

    /// Starts node `n` of this cluster on `data_dir`: one shard on core 0 or 1 by its parity,
    /// node 3 two.
    fn start_node(&self, n: u16, data_dir: &Path) -> Broker {
        let kafka = format!("{}:{}", self.host(n), self.base + 2 * (n - 1) + 1);
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
        // Every test's voters snapshot the metadata log after every round of entries, and its
        // log rolls small segments that snapshots delete: a restart starts from a snapshot, and
        // a broker that was away is sent one.
        let snapshots = "metadata.log.max.record.bytes.between.snapshots=1";
        let segments = "metadata.log.segment.bytes=16384";
        let mut args = vec!["--set", &node, "--set", &voters, "--set", &session];
        args.extend(["--set", &heartbeat, "--set", snapshots, "--set", segments]);
        for setting in &self.settings {
            args.extend(["--set", setting]);
        }
        let netns = self.netns.as_ref().map(|netns| netns.namespace(n));
        Broker::start_at_in(netns, data_dir, (&self.native(n), &kafka), cores, &args)
    }

    /// Starts node 4, which joins through the voters, and waits until all four are live.
    fn add_fourth(&mut self) {
        let node4 = self.dir.path().join("node4");
        self.add_fourth_on(&node4);
    }

    /// The same, node 4's data directory at `data_dir`.
    fn add_fourth_on(&mut self, data_dir: &Path) {
        let fourth = self.start_node(4, data_dir);
        self.brokers.push(fourth);
        let all = [1, 2, 3, 4];
        self.settle(&all, "four live brokers", |s| s.leader.is_some() && all_live(s, &all));
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

    // kill -9 of the active controller's broker: another voter takes over, topics can still
    // be created, nothing committed before is lost, and the dead broker is fenced once its
    // session lapses.
    let controller = first.leader.expect("a leader").0;
    let created = create_topic_at(&cluster.kafka(controller), "before-failover", 2, 1, &[]);
    assert_eq!(created, (0, String::new()));
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
    let created = create_topic_at(&cluster.kafka(survivors[0]), "after-failover", 2, 1, &[]);
    assert_eq!(created, (0, String::new()));
    cluster.settle_metadata(&survivors, "both topics after the failover", |v| {
        v.topics.contains_key("before-failover") && v.topics.contains_key("after-failover")
    });

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
    // Unchanged Kafka admin clients see the same cluster through every broker: its id, its
    // controller and every live broker, as kafka-python and confluent-kafka describe it.
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
            .enumerate()
            .map(|(index, broker)| {
                let printed =
                    scripts::run_script(broker, "unused", &python, &["describe_cluster.py"])
                        .unwrap_or_else(|e| {
                            panic!("describe_cluster through {}: {e}", broker.kafka_addr)
                        });
                let line = |client: &str| {
                    let tag = format!("\"client\": \"{client}\"");
                    printed.lines().find(|l| l.contains(&tag)).unwrap_or_default().to_string()
                };
                // librdkafka's describe_cluster asks Metadata, whose controller is the answering
                // broker (as a KRaft broker's: any broker forwards topic changes).
                let confluent = line("confluent-kafka");
                let own = format!("\"controller\": {}, ", index + 1);
                (line("kafka-python"), confluent.replace(&own, ""))
            })
            .collect();
        let view = cluster.status(1).expect("status");
        let whole = &views[0].0;
        let agreed = views.iter().all(|(k, c)| k == whole && c == &views[0].1)
            && view.leader.is_some_and(|l| whole.contains(&format!("\"controller\": {}", l.0)))
            && cluster.brokers.iter().all(|broker| {
                let (host, port) = broker.kafka_addr.rsplit_once(':').expect("host:port");
                let listed = format!("\"{host}\", {port}");
                whole.contains(&listed) && views[0].1.contains(&listed)
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

/// A partition as Metadata shows it: (index, leader, leader epoch, replicas, in-sync, offline).
type PartitionView = (i32, i32, i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// What Metadata v12 through the broker at `kafka` shows: the live brokers, and every topic's
/// id and partitions.
#[derive(Debug, PartialEq, Eq)]
struct MetadataView {
    brokers: Vec<i32>,
    topics: std::collections::BTreeMap<String, (uuid::Uuid, Vec<PartitionView>)>,
}

fn metadata_at(kafka: &str) -> MetadataView {
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    let mut conn = Conn::open(kafka);
    let mut request = MetadataRequest::default();
    request.topics = None; // every topic
    let response: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request);
    let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
    brokers.sort_unstable();
    let ids = |nodes: &[kafka_protocol::messages::BrokerId]| nodes.iter().map(|n| n.0).collect();
    let topics = response
        .topics
        .iter()
        .map(|t| {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            let mut partitions: Vec<PartitionView> = t
                .partitions
                .iter()
                .map(|p| {
                    let (replicas, isr) = (ids(&p.replica_nodes), ids(&p.isr_nodes));
                    let offline = ids(&p.offline_replicas);
                    (p.partition_index, p.leader_id.0, p.leader_epoch, replicas, isr, offline)
                })
                .collect();
            partitions.sort();
            (name, (t.topic_id, partitions))
        })
        .collect();
    MetadataView { brokers, topics }
}

impl Cluster {
    fn kafka(&self, node: i32) -> String {
        self.brokers[node as usize - 1].kafka_addr.clone()
    }

    /// Waits until Metadata through every broker of `asked` is the same and `check` holds for
    /// it; returns it.
    fn settle_metadata(
        &self,
        asked: &[i32],
        what: &str,
        check: impl Fn(&MetadataView) -> bool,
    ) -> MetadataView {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let views: Vec<MetadataView> =
                asked.iter().map(|n| metadata_at(&self.kafka(*n))).collect();
            if views.iter().all(|v| *v == views[0] && check(v)) {
                return views.into_iter().next().expect("a view");
            }
            assert!(Instant::now() < deadline, "metadata never showed: {what}; last: {views:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cluster_clients.py mode` through broker `node`'s Kafka listener.
    fn clients(&self, node: i32, mode: &str, env: &[(&str, &str)]) -> String {
        let python = scripts::pip_python();
        let broker = &self.brokers[node as usize - 1];
        let mut command = std::process::Command::new(&python);
        command
            .args(["cluster_clients.py", mode])
            .current_dir(scripts::kafka_dir())
            .env("SPATE_KAFKA", &broker.kafka_addr);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run cluster_clients.py");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "cluster_clients.py {mode} via {node}:\n{stdout}\n{stderr}"
        );
        stdout.into_owned()
    }
}

/// CreateTopics (v5) of one topic through `kafka`: by count and replication factor, or by a
/// replica assignment (partition i on `assignment[i]`). Answers (error code, message).
fn create_topic_at(
    kafka: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    assignment: &[&[i32]],
) -> (i16, String) {
    create_topic_with_configs_at(kafka, name, (partitions, replication_factor), assignment, &[])
}

/// The same, with topic settings `configs`.
fn create_topic_with_configs_at(
    kafka: &str,
    name: &str,
    (partitions, replication_factor): (i32, i16),
    assignment: &[&[i32]],
    configs: &[(&str, &str)],
) -> (i16, String) {
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic,
    };
    use kafka_protocol::messages::{
        BrokerId, CreateTopicsRequest, CreateTopicsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = replication_factor;
    topic.assignments = assignment
        .iter()
        .enumerate()
        .map(|(index, brokers)| {
            let mut listed = CreatableReplicaAssignment::default();
            listed.partition_index = index as i32;
            listed.broker_ids = brokers.iter().map(|b| BrokerId(*b)).collect();
            listed
        })
        .collect();
    topic.configs = common::kafka_wire::topic_configs(configs);
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response: CreateTopicsResponse = Conn::open(kafka).call(ApiKey::CreateTopics, 5, &request);
    let result = &response.topics[0];
    (result.error_code, result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
}

/// Topics through the controller from any broker: placed on distinct brokers with leaders
/// spread, served by their leaders to unchanged clients (NOT_LEADER_OR_FOLLOWER elsewhere), and
/// described alike by every broker; a killed broker's partitions without a leader until it
/// returns, a stopped one's at once; a topic deleted and created again while a broker was away
/// replaced on it; a fourth broker given replicas; everything back after a restart of all.
#[test]
fn topics_are_placed_served_and_described_alike_across_the_cluster() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    scripts::require_pip_confluent();
    scripts::require_kafka_python();
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));

    // Created through each broker, by each protocol.
    assert_eq!(create_topic_at(&cluster.kafka(1), "spread", 6, 1, &[]), (0, String::new()));
    let env = [("SPATE_TOPIC", "copies"), ("SPATE_PARTITIONS", "3"), ("SPATE_REPLICAS", "3")];
    cluster.clients(2, "create", &env);
    let native = std::process::Command::new(BINARY)
        .args(["topic", "create", "pair", "--partitions", "2", "--replication-factor", "2"])
        .args(["--broker", &cluster.brokers[2].addr])
        .output()
        .expect("spate topic create");
    assert!(native.status.success(), "{}", String::from_utf8_lossy(&native.stderr));
    let manual = create_topic_at(&cluster.kafka(3), "manual", -1, -1, &[&[3, 2], &[2, 1]]);
    assert_eq!(manual, (0, String::new()));
    // Refused clearly: more replicas than brokers, and an assignment naming a stranger.
    let (code, message) = create_topic_at(&cluster.kafka(1), "too-many", 1, 4, &[]);
    assert_eq!(code, 38, "INVALID_REPLICATION_FACTOR: {message}");
    let (code, message) = create_topic_at(&cluster.kafka(2), "stranger", -1, -1, &[&[9]]);
    assert_eq!(code, 39, "INVALID_REPLICA_ASSIGNMENT: {message}");
    let (code, message) = create_topic_at(&cluster.kafka(2), "uneven", -1, -1, &[&[1], &[1, 2]]);
    assert_eq!(code, 39, "INVALID_REPLICA_ASSIGNMENT: {message}");

    let names = ["copies", "manual", "pair", "spread"];
    let view = cluster.settle_metadata(&all, "four topics on three brokers", |v| {
        v.brokers == all && names.iter().all(|n| v.topics.contains_key(*n))
    });
    let leaders = |topic: &str| -> Vec<i32> { view.topics[topic].1.iter().map(|p| p.1).collect() };
    let mut spread = leaders("spread");
    spread.sort_unstable();
    assert_eq!(spread, [1, 1, 2, 2, 3, 3], "leaders spread evenly: {view:#?}");
    for (_, leader, epoch, replicas, isr, offline) in &view.topics["copies"].1 {
        let mut distinct = replicas.clone();
        distinct.sort_unstable();
        assert_eq!(distinct, all, "three replicas on three brokers");
        // Created with every replica in sync (their logs are all empty).
        let mut in_sync = isr.clone();
        in_sync.sort_unstable();
        assert_eq!((in_sync, *epoch, offline.is_empty()), (all.to_vec(), 0, true), "{leader}");
    }
    assert!(view.topics["pair"].1.iter().all(|p| p.3.len() == 2 && p.3[0] != p.3[1]));
    let manual: Vec<(i32, Vec<i32>)> =
        view.topics["manual"].1.iter().map(|p| (p.1, p.3.clone())).collect();
    assert_eq!(manual, [(3, vec![3, 2]), (2, vec![2, 1])]);
    // Each topic has an id, on disk beside each replica's partitions and nowhere else.
    let spread_id = view.topics["spread"].0;
    assert!(!spread_id.is_nil());
    for node in all {
        let dir = cluster.broker(node).data_dir.join("spread");
        let file = std::fs::read_to_string(dir.join("topic.toml")).expect("topic.toml");
        let text = spread_id.as_bytes();
        let id = base64_url(text);
        assert!(file.contains(&id), "node {node}: {file} lacks {id}");
        for (index, leader, ..) in &view.topics["spread"].1 {
            assert_eq!(dir.join(index.to_string()).exists(), *leader == node, "spread-{index}");
        }
    }

    // Unchanged clients agree through every broker (confluent-kafka, kafka-python, kcat).
    let described: Vec<String> = all.iter().map(|n| cluster.clients(*n, "describe", &[])).collect();
    let strip =
        |text: &str| text.lines().filter(|l| l.starts_with('{')).collect::<Vec<_>>().join("\n");
    assert!(described.iter().all(|d| strip(d) == strip(&described[0])), "{described:#?}");
    assert!(strip(&described[0]).contains("\"spread\""), "{}", described[0]);
    let kcat: Vec<String> = all
        .iter()
        .map(|n| {
            let out = std::process::Command::new("kcat")
                .args(["-L", "-b", &cluster.kafka(*n), "-m", "15"])
                .output()
                .expect("kcat (tests/kafka/install-clients.sh installs it)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            // All but the line naming the broker that answered, which also calls itself the
            // controller (as a KRaft broker does: any broker forwards topic changes).
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with("Metadata for"))
                .map(|l| l.trim_end_matches(" (controller)"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(kcat.iter().all(|k| *k == kcat[0]), "{kcat:#?}");
    assert!(
        kcat[0].contains(" 3 brokers:") && kcat[0].contains("topic \"spread\" with 6 partitions")
    );

    // Records go to each partition's leader, wherever the client bootstraps, and read back
    // through another broker; a group commits through its coordinator.
    let env = [("SPATE_TOPIC", "copies"), ("SPATE_RECORDS", "300"), ("SPATE_GROUP", "g")];
    cluster.clients(3, "produce", &env);
    let consumed = cluster.clients(1, "consume", &env);
    assert!(consumed.contains("\"committed\""), "{consumed}");
    // A native group member started from any broker finds the group's coordinator and each
    // partition's leader (spread over all three): it reads every record, and what it commits is
    // the group's, as `spate group describe` through another broker shows.
    let read = read_as_group_member(&cluster.brokers[0].addr, "copies", "native", 300);
    assert_eq!(read, 300, "every record of the three partitions");
    let described = std::process::Command::new(BINARY)
        .args(["group", "describe", "native", "--broker", &cluster.brokers[1].addr])
        .output()
        .expect("spate group describe");
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{}", String::from_utf8_lossy(&described.stderr));
    let committed: i64 = text
        .lines()
        .filter_map(|l| l.split("committed").nth(1)?.split_whitespace().next()?.parse::<i64>().ok())
        .sum();
    assert_eq!(committed, 300, "{text}");
    // The native client too: `spate produce` through broker 1 sends each keyed record to its
    // partition's leader, `spate consume` through broker 2 reads every partition from its own.
    let lines: String = (0..60).map(|i| format!("key{i}:value{i}\n")).collect();
    let mut produce = std::process::Command::new(BINARY)
        .args(["produce", "pair", "--key-separator", ":", "--broker", &cluster.brokers[0].addr])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spate produce");
    std::io::Write::write_all(&mut produce.stdin.take().expect("stdin"), lines.as_bytes())
        .expect("write the records");
    let produced = produce.wait_with_output().expect("spate produce ran");
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    let consumed = std::process::Command::new(BINARY)
        .args(["consume", "pair", "--from-beginning", "--count", "60", "--timeout-ms", "10000"])
        .args(["--format", "%k=%v", "--broker", &cluster.brokers[1].addr])
        .output()
        .expect("spate consume");
    assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
    let mut read: Vec<String> =
        String::from_utf8_lossy(&consumed.stdout).lines().map(str::to_string).collect();
    read.sort();
    let mut sent: Vec<String> = (0..60).map(|i| format!("key{i}=value{i}")).collect();
    sent.sort();
    assert_eq!(read, sent, "every record, once, from both partitions' leaders");

    // A produce to a partition this broker does not lead: NOT_LEADER_OR_FOLLOWER.
    let (partition, leader, ..) = view.topics["spread"].1[0].clone();
    let other = all.iter().copied().find(|n| *n != leader).expect("another broker");
    let mut request =
        common::kafka_wire::produce_request("spread", -1, common::kafka_wire::batch(-1, -1, 0, 3));
    request.topic_data[0].partition_data[0].index = partition;
    let mut conn = Conn::open(&cluster.kafka(other));
    let refused: kafka_protocol::messages::ProduceResponse =
        conn.call(ApiKey::Produce, 9, &request);
    assert_eq!(common::kafka_wire::produced(&refused).0, 6, "NOT_LEADER_OR_FOLLOWER");
    let mut conn = Conn::open(&cluster.kafka(leader));
    let taken: kafka_protocol::messages::ProduceResponse = conn.call(ApiKey::Produce, 9, &request);
    assert_eq!(common::kafka_wire::produced(&taken).0, 0);

    // A partition broker 2 leads, with records of its first leader epoch.
    let (on_two, ..) = view.topics["spread"].1.iter().find(|p| p.1 == 2).expect("led by 2").clone();
    let produce_to = |conn: &mut Conn, count: usize| {
        use common::kafka_wire::{batch, produce_request, produced};
        let mut request = produce_request("spread", -1, batch(-1, -1, 0, count));
        request.topic_data[0].partition_data[0].index = on_two;
        let taken: kafka_protocol::messages::ProduceResponse =
            conn.call(ApiKey::Produce, 9, &request);
        assert_eq!(produced(&taken).0, 0);
    };
    let mut conn2 = Conn::open(&cluster.kafka(2));
    produce_to(&mut conn2, 4);
    let (_, end_before, first_epoch) =
        common::kafka_wire::latest_in_epoch(&mut conn2, ("spread", on_two), -1);

    // Broker 2 killed and not restarted: fenced after its session, gone from Metadata, its
    // partitions without a leader (and listed offline) until it returns.
    cluster.broker(2).kill9();
    let survivors = [1, 3];
    let fenced = cluster.settle_metadata(&survivors, "broker 2 fenced", |v| v.brokers == survivors);
    for (index, leader, _, replicas, _, offline) in &fenced.topics["spread"].1 {
        if replicas == &[2] {
            assert_eq!((*leader, offline.clone()), (-1, vec![2]), "spread-{index}");
        }
    }
    cluster.broker(2).restart();
    let back = cluster.settle_metadata(&all, "broker 2 leads again", |v| {
        v.brokers == all && v.topics["spread"].1.iter().all(|p| p.1 == p.3[0])
    });
    // It leads in a new epoch, which starts where its log ended: OffsetForLeaderEpoch tells the
    // two apart, and a client still in the old epoch is fenced (KIP-320).
    let epoch = back.topics["spread"].1[on_two as usize].2;
    assert!(epoch > first_epoch, "a new leader epoch: {first_epoch} then {epoch}");
    let mut conn2 = Conn::open(&cluster.kafka(2));
    produce_to(&mut conn2, 3);
    let asked = ("spread", on_two);
    let epoch_end =
        |conn: &mut Conn, current, of| common::kafka_wire::epoch_end(conn, asked, current, of);
    assert_eq!(epoch_end(&mut conn2, epoch, first_epoch), (0, first_epoch, end_before));
    assert_eq!(epoch_end(&mut conn2, epoch, epoch), (0, epoch, end_before + 3));
    assert_eq!(epoch_end(&mut conn2, first_epoch, epoch).0, 74, "FENCED_LEADER_EPOCH");
    let latest = common::kafka_wire::latest_in_epoch(&mut conn2, asked, epoch);
    assert_eq!(latest, (0, end_before + 3, epoch));

    // Broker 3 stopped cleanly: its partitions move at once (well within a session).
    let stopped_at = Instant::now();
    cluster.broker(3).stop();
    cluster.settle_metadata(&[1, 2], "broker 3's partitions leaderless", |v| {
        v.topics["spread"].1.iter().filter(|p| p.3 == [3]).all(|p| p.1 == -1)
    });
    let moved = stopped_at.elapsed();
    assert!(moved < Duration::from_millis(SESSION_TIMEOUT_MS), "{moved:?}: not at once");
    // While it is away, "spread" is deleted and created again, with replicas on it.
    let held_before: Vec<i32> =
        view.topics["spread"].1.iter().filter(|p| p.3 == [3]).map(|p| p.0).collect();
    assert_eq!(delete_topic_at(&cluster.kafka(1), "spread"), 0);
    assert_eq!(create_topic_at(&cluster.kafka(2), "spread", -1, -1, &[&[1, 3], &[2, 3]]).0, 0);
    cluster.broker(3).restart();
    let renewed = cluster.settle_metadata(&all, "broker 3 back, spread new", |v| {
        v.brokers == all && v.topics.get("spread").is_some_and(|t| t.0 != spread_id)
    });
    // Produced with acks=all once broker 3 is back: min.insync.replicas is 2, so each record
    // waits for broker 3 to catch up and rejoin the in-sync sets.
    let env = [("SPATE_TOPIC", "spread"), ("SPATE_RECORDS", "20"), ("SPATE_GROUP", "g2")];
    cluster.clients(1, "produce", &env);
    let new_id = base64_url(renewed.topics["spread"].0.as_bytes());
    let node3 = cluster.broker(3).data_dir.join("spread");
    let deadline = Instant::now() + SETTLE_WAIT;
    while !std::fs::read_to_string(node3.join("topic.toml")).is_ok_and(|f| f.contains(&new_id)) {
        assert!(Instant::now() < deadline, "broker 3 kept the deleted topic's file");
        std::thread::sleep(Duration::from_millis(100));
    }
    for index in held_before.iter().filter(|i| **i >= 2) {
        assert!(
            !node3.join(index.to_string()).exists(),
            "the deleted spread-{index} is still there"
        );
    }
    // Only the new topic's records are served.
    let consumed = cluster.clients(2, "consume", &env);
    assert!(consumed.contains("\"consumed\""), "{consumed}");

    // A fourth broker joins and is given replicas of new topics.
    let node4 = cluster.dir.path().join("node4");
    let fourth = cluster.start_node(4, &node4);
    cluster.brokers.push(fourth);
    let all4 = [1, 2, 3, 4];
    cluster.settle_metadata(&all4, "four brokers", |v| v.brokers == all4);
    assert_eq!(create_topic_at(&cluster.kafka(4), "wider", 8, 1, &[]).0, 0);
    let wider = cluster.settle_metadata(&all4, "wider placed", |v| v.topics.contains_key("wider"));
    let on_four = wider.topics["wider"].1.iter().filter(|p| p.1 == 4).count();
    assert_eq!(on_four, 2, "{wider:#?}");

    // Every broker stopped and started again: the same topics, ids, assignments and committed
    // offsets.
    let before = cluster.settle_metadata(&all4, "settled", |_| true);
    let committed_before =
        cluster.clients(1, "committed", &[("SPATE_TOPIC", "copies"), ("SPATE_GROUP", "g")]);
    for node in all4 {
        cluster.broker(node).stop();
    }
    for node in all4 {
        cluster.broker(node).restart();
    }
    let after = cluster.settle_metadata(&all4, "all back", |v| {
        v.brokers == all4 && v.topics.values().all(|t| t.1.iter().all(|p| p.1 >= 0))
    });
    let assignments = |v: &MetadataView| -> Vec<(String, uuid::Uuid, Vec<Vec<i32>>)> {
        v.topics
            .iter()
            .map(|(n, t)| (n.clone(), t.0, t.1.iter().map(|p| p.3.clone()).collect()))
            .collect()
    };
    assert_eq!(assignments(&after), assignments(&before));
    let committed_after =
        cluster.clients(1, "committed", &[("SPATE_TOPIC", "copies"), ("SPATE_GROUP", "g")]);
    let offsets =
        |text: &str| text.lines().find(|l| l.contains("committed")).unwrap_or_default().to_string();
    assert_eq!(offsets(&committed_after), offsets(&committed_before));
    assert!(offsets(&committed_after).contains(": "), "{committed_after}");
}

/// A topic's settings changed through one broker (`spate topic alter`, through the controller)
/// apply on every broker at once, leader and followers alike, and outlive a restart: the
/// segments every replica holds of records older than the new `retention.ms` go (with
/// `retention.ms=-1` at creation, they were kept). A DeleteRecords moves the log start of the
/// leader and of every follower, kept across a restart. A new `min.insync.replicas` holds at
/// the leader at once.
#[test]
fn topic_settings_change_on_every_broker_without_a_restart() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start_with(&["log.retention.check.interval.ms=200"]);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let configs = [("segment.bytes", "16384"), ("retention.ms", "-1")];
    aged_topic_on_three(&cluster, "tuned", &configs);
    let segments = |node: usize| log_segments(&cluster, node, "tuned");
    // One hour: every record is older (2023). Through broker 2, whoever leads.
    let altered = std::process::Command::new(BINARY)
        .args(["topic", "alter", "tuned", "--config", "retention.ms=3600000"])
        .args(["--delete-config", "segment.bytes", "--broker", &cluster.brokers[1].addr])
        .output()
        .expect("spate topic alter");
    assert!(altered.status.success(), "{}", String::from_utf8_lossy(&altered.stderr));
    wait_until("retention deletes the sealed segments on every replica", &|| {
        (0..3).all(|n| segments(n) == 1)
    });
    let described = |cluster: &Cluster, node: usize| -> String {
        let output = std::process::Command::new(BINARY)
            .args(["topic", "describe", "tuned", "--broker", &cluster.brokers[node].addr])
            .output()
            .expect("spate topic describe");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for node in 0..3 {
        let text = described(&cluster, node);
        assert!(text.contains("config retention.ms=3600000"), "broker {}: {text}", node + 1);
        assert!(text.contains("config segment.bytes=1073741824"), "broker {}: {text}", node + 1);
        let file = cluster.brokers[node].data_dir.join("tuned").join("topic.toml");
        let toml = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(toml.contains("\"retention.ms\" = \"3600000\""), "{}: {toml}", file.display());
        assert!(!toml.contains("segment.bytes"), "{}: {toml}", file.display());
    }
    // Retention off again, and twenty more records. DeleteRecords through any broker (the
    // client finds the leader): the log start moves inside the active segment on the leader,
    // and the followers take it from their leader.
    let kept = std::process::Command::new(BINARY)
        .args(["topic", "alter", "tuned", "--config", "retention.ms=-1"])
        .args(["--broker", &cluster.brokers[2].addr])
        .output()
        .expect("spate topic alter");
    assert!(kept.status.success(), "{}", String::from_utf8_lossy(&kept.stderr));
    let bootstrap = cluster.brokers[0].addr.clone();
    run(|| async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let leaders = spate::client::Leaders::new(client);
        for first in [400, 410] {
            let produced = produce_to_leader(&leaders, "tuned", 0, first..first + 10).await;
            produced.unwrap_or_else(|e| panic!("records {first}..: {e}"));
        }
    });
    let deleted = std::process::Command::new(BINARY)
        .args(["topic", "delete-records", "tuned", "--partition", "0", "--before", "405"])
        .args(["--broker", &cluster.brokers[0].addr])
        .output()
        .expect("spate topic delete-records");
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert!(String::from_utf8_lossy(&deleted.stdout).contains("starts at offset 405"));
    let log_start_files: Vec<std::path::PathBuf> = (cluster.brokers.iter())
        .map(|b| b.data_dir.join("tuned").join("0").join("log-start-offset"))
        .collect();
    let recorded =
        |node: usize| std::fs::read_to_string(&log_start_files[node]).unwrap_or_default();
    // Answered once every in-sync replica has it.
    for node in 0..3 {
        assert_eq!(recorded(node), "0\n405\n", "broker {}", node + 1);
    }
    // Kept in the metadata and on the disk: a broker restarted has the settings as changed
    // and its replica the log start.
    cluster.broker(3).stop();
    cluster.broker(3).restart();
    cluster.settle(&all, "three live brokers again", |s| all_live(s, &all));
    let text = described(&cluster, 2);
    assert!(text.contains("config retention.ms=-1"), "broker 3 restarted: {text}");
    assert!(text.contains("log_start          405"), "broker 3 restarted: {text}");
    assert_eq!(recorded(2), "0\n405\n", "broker 3 restarted");
    // A min.insync.replicas raised past the in-sync set holds at the leader at once: acks=all
    // is refused with NOT_ENOUGH_REPLICAS; lowered again, it is taken.
    let alter = |cluster: &Cluster, setting: &str| {
        let altered = std::process::Command::new(BINARY)
            .args(["topic", "alter", "tuned", "--config", setting])
            .args(["--broker", &cluster.brokers[0].addr])
            .output()
            .expect("spate topic alter");
        assert!(altered.status.success(), "{}", String::from_utf8_lossy(&altered.stderr));
    };
    alter(&cluster, "min.insync.replicas=3");
    cluster.broker(3).stop();
    let view = cluster.settle_metadata(&[1, 2], "broker 3 out of the in-sync set", |v| {
        v.topics.get("tuned").is_some_and(|t| t.1[0].1 > 0 && t.1[0].4.len() == 2)
    });
    let leader = cluster.brokers[view.topics["tuned"].1[0].1 as usize - 1].addr.clone();
    let produce_once = |leader: String, seq: u64| {
        run(move || async move {
            let client = Client::connect(&leader).await.expect("connect");
            let batch = common::batch_of([common::record(0, seq)]);
            client.produce("tuned", 0, spate::native::messages::Acks::All, batch).await
        })
    };
    let refused = produce_once(leader.clone(), 420);
    assert_eq!(
        refused.as_ref().err().and_then(|e| e.code()),
        Some(spate::native::messages::ErrorCode::NotEnoughReplicas),
        "{refused:?}"
    );
    alter(&cluster, "min.insync.replicas=2");
    let deadline = Instant::now() + SETTLE_WAIT;
    while let Err(e) = produce_once(leader.clone(), 420) {
        assert!(Instant::now() < deadline, "acks=all with min.insync.replicas=2: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Dynamic broker settings (KIP-226) through Kafka's IncrementalAlterConfigs, on three
/// brokers: a cluster-wide `log.retention.ms` (the broker resource `""`), sent to one broker,
/// deletes the old segments on every replica of a topic without its own retention, and every
/// broker describes the topic's retention as that default (source 3); broker 3's own value
/// holds on broker 3 alone (source 2). Another broker's resource, a setting that is static or
/// cluster-wide only, and a bad value are refused. A cluster-wide `min.insync.replicas` above
/// the replicas refuses acks=all at the leader, across a restart of every broker, until it is
/// deleted.
#[test]
fn broker_settings_change_on_every_broker_without_a_restart() {
    use common::kafka_wire::{alter_configs, describe_configs};
    const TOPIC: i8 = 2;
    const BROKER: i8 = 4;
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster =
        Cluster::start_with(&["log.retention.check.interval.ms=200", "log.retention.ms=-1"]);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    // (Retention is off until the test sets it.)
    aged_topic_on_three(&cluster, "aged", &[("segment.bytes", "16384")]);
    let segments = |node: usize| log_segments(&cluster, node, "aged");

    // One hour, cluster-wide, through broker 2: every record is older (2023).
    let kafka: Vec<String> = (1..=3).map(|node| cluster.kafka(node)).collect();
    let at = |node: i32| Conn::open(&kafka[node as usize - 1]);
    let alter = |node: i32, resource: &str, settings: &[(&str, Option<&str>)]| {
        alter_configs(&mut at(node), BROKER, resource, settings)
    };
    assert_eq!(alter(2, "", &[("log.retention.ms", Some("3600000"))]), (0, String::new()));
    wait_until("retention deletes the sealed segments on every replica", &|| {
        (0..3).all(|n| segments(n) == 1)
    });
    let retention = |node: i32| {
        let (code, described) = describe_configs(&mut at(node), TOPIC, "aged");
        assert_eq!(code, 0, "describing aged at broker {node}");
        described["retention.ms"].clone()
    };
    for node in all {
        let described = retention(node);
        assert_eq!((described.value.as_str(), described.source), ("3600000", 3), "broker {node}");
        assert_eq!(described.synonym_sources, [3, 4, 5], "broker {node}: {described:?}");
    }

    // Broker 3's own value, through `spate cluster config` asking broker 1: the command sends
    // it to broker 3, as admin clients send a broker's resource to that broker.
    let config = |args: &[&str]| {
        let output = std::process::Command::new(BINARY)
            .args(["cluster", "config", "--broker", &cluster.brokers[0].addr])
            .args(args)
            .output()
            .expect("spate cluster config");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let shown = config(&["--node", "3", "--config", "log.retention.ms=7200000"]);
    assert!(shown.contains("changed 1 setting(s) of broker 3"), "{shown}");
    let expected = "cluster-wide defaults\n  log.retention.ms=3600000\nbroker 3\n  \
                    log.retention.ms=7200000\n";
    assert!(shown.ends_with(expected), "{shown}");
    assert!(config(&[]).ends_with(expected));
    let described = retention(3);
    assert_eq!((described.value.as_str(), described.source), ("7200000", 2));
    assert_eq!(described.synonym_sources, [2, 3, 4, 5]);
    assert_eq!(retention(1).value, "3600000", "broker 1 keeps the cluster-wide value");
    let (code, broker_3) = describe_configs(&mut at(3), BROKER, "3");
    assert_eq!(code, 0);
    let setting = &broker_3["log.retention.ms"];
    assert_eq!((setting.value.as_str(), setting.source, setting.read_only), ("7200000", 2, false));
    assert!(broker_3["num.partitions"].read_only);
    let (code, defaults) = describe_configs(&mut at(1), BROKER, "");
    assert_eq!(code, 0);
    let listed: Vec<(&str, &str, i8)> =
        defaults.iter().map(|(k, v)| (k.as_str(), v.value.as_str(), v.source)).collect();
    assert_eq!(listed, [("log.retention.ms", "3600000", 3)], "only what is set cluster-wide");

    // Refused as Kafka refuses them: another broker's resource, a static setting, one that is
    // cluster-wide only, a bad value.
    const INVALID_REQUEST: i16 = 42;
    const INVALID_CONFIG: i16 = 40;
    assert_eq!(alter(1, "3", &[("log.retention.ms", Some("1"))]).0, INVALID_REQUEST);
    assert_eq!(alter(1, "", &[("num.partitions", Some("4"))]).0, INVALID_REQUEST);
    assert_eq!(alter(1, "1", &[("min.insync.replicas", Some("1"))]).0, INVALID_CONFIG);
    // Each refusal names the setting as it was sent, by its broker name.
    let (code, why) = alter(1, "", &[("log.retention.ms", Some("soon"))]);
    assert!(code == INVALID_REQUEST && why.contains("for log.retention.ms:"), "{code} {why}");
    let twice = [("message.max.bytes", Some("1000")), ("message.max.bytes", Some("2000"))];
    let (code, why) = alter(1, "", &twice);
    assert!(code == INVALID_REQUEST && why.contains("message.max.bytes is changed"), "{why}");
    // Within what a broker lets one setting hold, but past what it reads in a request.
    let (code, why) = alter(1, "", &[("message.max.bytes", Some("209715200"))]);
    let named = why.starts_with("message.max.bytes 209715200 must be below");
    assert!(code == INVALID_REQUEST && named, "{code} {why}");

    // More in sync than there are replicas: acks=all is refused at the leader.
    assert_eq!(alter(1, "", &[("min.insync.replicas", Some("4"))]), (0, String::new()));
    let acks_all = || {
        let leader = metadata_at(&kafka[0]).topics["aged"].1[0].1;
        let batch = common::kafka_wire::batch(-1, -1, 0, 2);
        let request = common::kafka_wire::produce_request("aged", -1, batch);
        let answer: kafka_protocol::messages::ProduceResponse =
            at(leader).call(ApiKey::Produce, 9, &request);
        common::kafka_wire::produced(&answer).0
    };
    // (Answered at once, but a leader may be moving: waited for.)
    let answers = |code: i16, what: &str| {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let answered = acks_all();
            if answered == code {
                break;
            }
            assert!(Instant::now() < deadline, "acks=all {what}: {answered}, not {code}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    answers(19, "with min.insync.replicas=4");

    // Every broker restarted: the settings are the cluster's, kept in its metadata.
    for node in all {
        cluster.broker(node).stop();
    }
    for node in all {
        cluster.broker(node).restart();
    }
    cluster.settle(&all, "three live brokers again", |s| s.leader.is_some() && all_live(s, &all));
    // (Every replica back in sync: the default minimum of 2 does not refuse.)
    cluster.settle_metadata(&all, "aged led again, every replica in sync", |v| {
        v.topics.get("aged").is_some_and(|t| t.1[0].1 >= 0 && t.1[0].4.len() == 3)
    });
    assert_eq!(retention(1).value, "3600000");
    assert_eq!(retention(3).value, "7200000");
    answers(19, "after the restart");
    assert_eq!(alter(2, "", &[("min.insync.replicas", None)]), (0, String::new()));
    answers(0, "once min.insync.replicas is gone");
}

/// Topic `name` of one partition on brokers 1 to 3 with settings `configs`, led with every
/// replica in sync, then forty batches of ten records, each record stamped in 2023, produced at
/// its leader: with `segment.bytes` 16384, several segments on every replica, waited for.
fn aged_topic_on_three(cluster: &Cluster, name: &str, configs: &[(&str, &str)]) {
    let all = [1, 2, 3];
    let created = create_topic_with_configs_at(&cluster.kafka(1), name, (1, 3), &[], configs);
    assert_eq!(created, (0, String::new()));
    cluster.settle_metadata(&all, &format!("{name} led"), |v| {
        v.topics.get(name).is_some_and(|t| t.1[0].1 >= 0 && t.1[0].4.len() == 3)
    });
    let bootstrap = cluster.brokers[0].addr.clone();
    let topic = name.to_string();
    run(|| async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let leaders = spate::client::Leaders::new(client);
        for first in (0..400).step_by(10) {
            let produced = produce_to_leader(&leaders, &topic, 0, first..first + 10).await;
            produced.unwrap_or_else(|e| panic!("records {first}..: {e}"));
        }
    });
    wait_until("every replica holds several segments", &|| {
        (0..3).all(|node| log_segments(cluster, node, name) >= 3)
    });
}

/// The segment files of partition 0 of `topic` in the data directory of the broker at index
/// `node` of the cluster.
fn log_segments(cluster: &Cluster, node: usize, topic: &str) -> usize {
    let dir = cluster.brokers[node].data_dir.join(topic).join("0");
    let files = std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>());
    let logs = files.unwrap_or_default().into_iter();
    logs.filter(|f| f.path().extension().is_some_and(|e| e == "log")).count()
}

/// Waits until `done` holds, for [`SETTLE_WAIT`] at most.
fn wait_until(what: &str, done: &dyn Fn() -> bool) {
    let deadline = Instant::now() + SETTLE_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `want` records of `topic` as a native member of `group` through the broker at
/// `bootstrap` (or what it finds in 30 s), then leaves, committing what it read.
fn read_as_group_member(bootstrap: &str, topic: &str, group: &str, want: usize) -> usize {
    let (bootstrap, topic, group) = (bootstrap.to_string(), topic.to_string(), group.to_string());
    run(|| async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let mut config = GroupConfig::new(&group, &[topic.as_str()]);
        config.offset_reset = OffsetReset::Earliest;
        let member = GroupConsumer::join(client, config).await.expect("join the group");
        let deadline = Instant::now() + SETTLE_WAIT;
        let mut read = 0;
        while read < want && Instant::now() < deadline {
            read += member.poll(Duration::from_millis(100)).await.expect("poll").len();
        }
        member.close().await.expect("leave the group");
        read
    })
}

/// DeleteTopics (v4) of one topic through `kafka`: its error code.
fn delete_topic_at(kafka: &str, name: &str) -> i16 {
    use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut request = DeleteTopicsRequest::default();
    request.topic_names = vec![TopicName(StrBytes::from_string(name.to_string()))];
    request.timeout_ms = 30_000;
    let response: DeleteTopicsResponse = Conn::open(kafka).call(ApiKey::DeleteTopics, 4, &request);
    response.responses[0].error_code
}

/// Kafka's text form of an id: URL-safe base64 without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A voter restarted without a quorum to join replays its log, but must not present that
/// (perhaps stale) metadata as current: once clients stop waiting for it to catch up, its
/// Metadata names the topics it knows with no leader (LEADER_NOT_AVAILABLE), and it leads
/// nothing.
#[test]
fn a_broker_that_cannot_catch_up_names_no_leader() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    assert_eq!(create_topic_at(&cluster.kafka(1), "known", 3, 1, &[]).0, 0);
    cluster.settle_metadata(&all, "the topic everywhere", |v| {
        v.topics.get("known").is_some_and(|t| t.1.iter().all(|p| p.1 > 0))
    });
    for node in all {
        cluster.broker(node).stop();
    }
    // Alone, node 1 replays its log but can elect no controller: it never joins.
    cluster.broker(1).restart();
    let view = metadata_at(&cluster.kafka(1));
    let known = &view.topics.get("known").expect("the topic, from its log").1;
    assert!(known.iter().all(|p| p.1 == -1), "a stale leader presented as current: {known:?}");
    let mut request =
        common::kafka_wire::produce_request("known", -1, common::kafka_wire::batch(-1, -1, 0, 1));
    for partition in 0..3 {
        request.topic_data[0].partition_data[0].index = partition;
        let mut conn = Conn::open(&cluster.kafka(1));
        let answer: kafka_protocol::messages::ProduceResponse =
            conn.call(ApiKey::Produce, 9, &request);
        assert_eq!(common::kafka_wire::produced(&answer).0, 6, "NOT_LEADER_OR_FOLLOWER");
    }
}

/// The metadata log snapshotted and truncated while a voter and a broker that only follows the
/// log were down: both catch up from the snapshot (the voter sent it by the leader through
/// Raft, the follower given it by its metadata fetch) and serve what changed while they were
/// away, and nothing else.
#[test]
fn brokers_down_across_a_snapshot_catch_up_from_it() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    scripts::require_pip_confluent();
    let mut cluster = Cluster::start();
    let voters = [1, 2, 3];
    cluster.settle(&voters, "three live brokers", |s| s.leader.is_some() && all_live(s, &voters));
    let node4 = cluster.dir.path().join("node4");
    let fourth = cluster.start_node(4, &node4);
    cluster.brokers.push(fourth);
    let all = [1, 2, 3, 4];
    cluster.settle(&all, "four live brokers", |s| all_live(s, &all));
    // Held by broker 3, which will not see it deleted.
    assert_eq!(
        create_topic_at(&cluster.kafka(1), "doomed", -1, -1, &[&[3], &[4]]),
        (0, String::new())
    );
    cluster.settle_metadata(&all, "doomed everywhere", |v| v.topics.contains_key("doomed"));
    assert!(cluster.broker(3).data_dir.join("doomed").join("0").exists());

    // Broker 3, a voter, crashes; broker 4 stops.
    let away = cluster.status(3).expect("broker 3's status").applied;
    cluster.broker(3).kill9();
    cluster.broker(4).stop();
    let pair = [1, 2];
    cluster.settle(&pair, "a controller without broker 3", |s| s.leader.is_some_and(|l| l.0 != 3));
    // While they are away, topics come and go; one wide enough that its creation (one entry
    // holding its 300 partitions' states) outgrows a segment, which a snapshot then frees.
    assert_eq!(delete_topic_at(&cluster.kafka(1), "doomed"), 0);
    assert_eq!(create_topic_at(&cluster.kafka(2), "wide", 300, 1, &[]), (0, String::new()));
    assert_eq!(
        create_topic_at(&cluster.kafka(1), "after", -1, -1, &[&[1, 3], &[2, 3]]),
        (0, String::new())
    );
    let truncated = cluster.settle(&pair, "the log snapshotted and truncated past broker 3", |s| {
        s.snapshot > away && s.log_start > away
    });

    // Both come back, and catch up from the snapshot rather than from entries long gone.
    cluster.broker(3).restart();
    cluster.broker(4).restart();
    let view = cluster.settle_metadata(&all, "every broker back and caught up", |v| {
        let names: Vec<&str> = v.topics.keys().map(String::as_str).collect();
        v.brokers == all
            && names == ["after", "wide"]
            && v.topics["after"].1.iter().all(|p| p.1 >= 0)
    });
    cluster.settle(&all, "every broker past the snapshot", |s| s.applied >= truncated.snapshot);
    let voter = cluster.broker(3).stderr();
    assert!(voter.contains("caught up from the controller's snapshot"), "{voter}");
    let follower = cluster.broker(4).stderr();
    assert!(follower.contains("caught up from a metadata snapshot"), "{follower}");
    let status = cluster.status(3).expect("broker 3's status");
    assert!(status.snapshot > away, "broker 3 holds a snapshot past {away}: {status:#?}");

    // The topic deleted while broker 3 was down is gone from its disk too; the new one is
    // served through it.
    let doomed = cluster.broker(3).data_dir.join("doomed");
    let deadline = Instant::now() + SETTLE_WAIT;
    while doomed.exists() {
        assert!(Instant::now() < deadline, "broker 3 kept the deleted topic");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        view.topics["after"].1.iter().map(|p| p.3.clone()).collect::<Vec<_>>(),
        [vec![1, 3], vec![2, 3]]
    );
    let env = [("SPATE_TOPIC", "after"), ("SPATE_RECORDS", "40"), ("SPATE_GROUP", "g")];
    cluster.clients(3, "produce", &env);
    let consumed = cluster.clients(4, "consume", &env);
    assert!(consumed.contains("\"consumed\""), "{consumed}");
}

/// Replication (issue 16): a topic of replication factor 3 on brokers 2 to 4 (broker 1, a
/// voter, holds none of it, so two of its replicas can be down while the controller's quorum
/// lives), `min.insync.replicas` 2 by default. Records produced with acks=all through whichever
/// broker leads survive `kill -9` of their leader, each at its acknowledged offset; every
/// replica, made leader in turn, holds them all; with two replicas down acks=all is refused
/// with NOT_ENOUGH_REPLICAS (Kafka's code 19 to a Kafka client) and taken again once one
/// returns and catches up.
#[test]
fn acknowledged_records_survive_leader_kills_and_acks_all_needs_min_insync_replicas() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    cluster.add_fourth();
    let all = [1, 2, 3, 4];
    let created = create_topic_at(&cluster.kafka(1), "rep", -1, -1, &[&[2, 3, 4], &[4, 2, 3]]);
    assert_eq!(created, (0, String::new()));
    let full = |v: &MetadataView| {
        v.topics.get("rep").is_some_and(|t| t.1.iter().all(|p| p.1 >= 0 && p.4.len() == 3))
    };
    let mut live: Vec<i32> = all.to_vec();
    cluster.settle_metadata(&live, "rep in sync on three", full);

    // (partition, offset, seq) of every acknowledged record.
    let mut acked: Vec<(u32, u64, u64)> = Vec::new();
    let mut next_seq = 0u64;
    let mut produce_round = |cluster: &Cluster, acked: &mut Vec<(u32, u64, u64)>| {
        let bootstrap = cluster.brokers[0].addr.clone();
        let first = next_seq;
        next_seq += 60;
        let sent = run(|| async move {
            let leaders =
                spate::client::Leaders::new(Client::connect(&bootstrap).await.expect("connect"));
            let mut sent = Vec::new();
            for seq in first..first + 60 {
                let partition = (seq % 2) as u32;
                let record = common::record(partition, seq);
                let base = leaders
                    .with_leader("rep", partition, |client| {
                        let batch = common::batch_of([record.clone()]);
                        async move {
                            client
                                .produce(
                                    "rep",
                                    partition,
                                    spate::native::messages::Acks::All,
                                    batch,
                                )
                                .await
                        }
                    })
                    .await
                    .unwrap_or_else(|e| panic!("record {seq} to rep-{partition}: {e}"))
                    .expect("an answer with acks=all");
                sent.push((partition, base, seq));
            }
            sent
        });
        acked.extend(sent);
    };
    let leader_of = |cluster: &Cluster, live: &[i32], partition: usize| -> i32 {
        let view = metadata_at(&cluster.kafka(live[0]));
        view.topics["rep"].1[partition].1
    };

    // Two rounds: the leader of partition 0 killed mid-stream, and back.
    produce_round(&cluster, &mut acked);
    for _ in 0..2 {
        let victim = leader_of(&cluster, &live, 0);
        assert!([2, 3, 4].contains(&victim), "rep-0 led by {victim}");
        let controller = cluster.status(1).ok().and_then(|s| s.leader).map(|n| n.0);
        let node = format!("node={victim} ");
        let fenced_at_once = |log: &str| {
            log.lines().filter(|l| l.contains("fenced at once") && l.contains(&node)).count()
        };
        let before = controller.map_or(0, |c| fenced_at_once(&cluster.broker(c).stderr()));
        cluster.broker(victim).kill9();
        live.retain(|n| *n != victim);
        produce_round(&cluster, &mut acked);
        // Its heartbeat connection closed with it: the active controller fenced it at once,
        // not a session later (unless it was the controller itself).
        if let Some(controller) = controller.filter(|c| *c != victim) {
            let log = cluster.broker(controller).stderr();
            let fast = fenced_at_once(&log) > before;
            assert!(fast, "controller {controller} did not fence {victim} at once:\n{log}");
        }
        cluster.broker(victim).restart();
        live = all.to_vec();
        cluster.settle_metadata(&live, "the killed broker back in sync", full);
        produce_round(&cluster, &mut acked);
    }

    // Every acknowledged record is where it was acknowledged, on whichever replica leads:
    // checked on the current leader, then on the next two as their predecessors are killed.
    // The read follows the leader should it move meanwhile (CI once saw rep-0's leader change
    // between the metadata asked and the fetch).
    let verify = |cluster: &Cluster, live: &[i32], acked: &[(u32, u64, u64)]| {
        for partition in 0..2u32 {
            let leader = leader_of(cluster, live, partition as usize);
            let address = cluster.brokers[leader as usize - 1].addr.clone();
            let read = run(|| async move {
                let leaders =
                    spate::client::Leaders::new(Client::connect(&address).await.expect("connect"));
                common::read_all_from_leaders(&leaders, "rep", partition, 0).await
            });
            // (The Kafka client's records below carry no sequence header.)
            let by_offset: std::collections::BTreeMap<u64, u64> = read
                .iter()
                .filter_map(|(offset, record)| {
                    let seq = record.headers.first()?.1.as_slice().try_into().ok()?;
                    Some((*offset, u64::from_le_bytes(seq)))
                })
                .collect();
            for (p, offset, seq) in acked.iter().filter(|a| a.0 == partition) {
                assert_eq!(
                    by_offset.get(offset),
                    Some(seq),
                    "rep-{p}: acknowledged record {seq} at offset {offset} missing on its leader \
                     ({leader} as the read began)"
                );
            }
        }
    };
    verify(&cluster, &live, &acked);
    let first = leader_of(&cluster, &live, 0);
    cluster.broker(first).kill9();
    live.retain(|n| *n != first);
    let next = {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let view = metadata_at(&cluster.kafka(live[0]));
            let leader = view.topics["rep"].1[0].1;
            if leader >= 0 && leader != first && view.brokers == live {
                break leader;
            }
            assert!(Instant::now() < deadline, "no new leader for rep-0: {view:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    verify(&cluster, &live, &acked);
    // Two of the three replicas down (one voter at most, so the controller keeps its quorum):
    // the last in sync leads alone.
    let second = if first == 4 { next } else { 4 };
    cluster.broker(second).kill9();
    live.retain(|n| *n != second);
    let last = [2, 3, 4].into_iter().find(|n| *n != first && *n != second).expect("a third");
    cluster.settle_metadata(&live, "one replica left in sync", |v| {
        v.brokers == live && v.topics["rep"].1.iter().all(|p| p.1 == last && p.4 == [last])
    });
    verify(&cluster, &live, &acked);
    // acks=all refused, to the native client and to a Kafka client; acks=1 still taken.
    let address = cluster.brokers[last as usize - 1].addr.clone();
    let refused = run(|| async move {
        let client = Client::connect(&address).await.expect("connect");
        let batch = common::batch_of([common::record(0, 1_000_000)]);
        client.produce("rep", 0, spate::native::messages::Acks::All, batch).await
    });
    let code = refused.as_ref().err().and_then(|e| e.code());
    assert_eq!(code, Some(spate::native::messages::ErrorCode::NotEnoughReplicas), "{refused:?}");
    let mut conn = Conn::open(&cluster.kafka(last));
    let request =
        common::kafka_wire::produce_request("rep", -1, common::kafka_wire::batch(-1, -1, 0, 2));
    let answer: kafka_protocol::messages::ProduceResponse = conn.call(ApiKey::Produce, 9, &request);
    assert_eq!(common::kafka_wire::produced(&answer).0, 19, "NOT_ENOUGH_REPLICAS");
    let request =
        common::kafka_wire::produce_request("rep", 1, common::kafka_wire::batch(-1, -1, 0, 2));
    let answer: kafka_protocol::messages::ProduceResponse = conn.call(ApiKey::Produce, 9, &request);
    assert_eq!(common::kafka_wire::produced(&answer).0, 0, "acks=1 needs only the leader");
    // One comes back and catches up: acks=all is taken again.
    cluster.broker(first).restart();
    live.push(first);
    live.sort_unstable();
    cluster.settle_metadata(&live, "two in sync again", |v| {
        v.brokers == live && v.topics["rep"].1.iter().all(|p| p.4.len() == 2)
    });
    produce_round(&cluster, &mut acked);
    verify(&cluster, &live, &acked);
}

/// A group of three confluent-kafka members keeps reading through the `kill -9` of its
/// coordinator's broker: the group's `__consumer_offsets` partition (three replicas) gets a new
/// leader, whose coordinator replays the partition and serves the group; the members rejoin it
/// and read every record produced after the death; and every commit the coordinators
/// acknowledged is still committed afterwards.
#[test]
fn a_consumer_group_keeps_consuming_through_its_coordinators_death() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    // Small offsets segments, for the compaction at the end.
    let mut cluster = Cluster::start_with(&["offsets.topic.segment.bytes=16384"]);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let (topic, group) = ("grouped", "survivors");
    assert_eq!(create_topic_at(&cluster.kafka(1), topic, 6, 3, &[]), (0, String::new()));
    let in_sync = |v: &MetadataView| {
        v.topics.get(topic).is_some_and(|t| t.1.iter().all(|p| p.1 >= 0 && p.4.len() == 3))
    };
    cluster.settle_metadata(&all, "the topic in sync on three", in_sync);
    const HALF: usize = 1500;
    let half = HALF.to_string();
    cluster.clients(1, "produce", &[("SPATE_TOPIC", topic), ("SPATE_RECORDS", &half)]);

    let bootstrap: Vec<String> = all.iter().map(|n| cluster.kafka(*n)).collect();
    let (out, err) =
        (cluster.dir.path().join("members.out"), cluster.dir.path().join("members.err"));
    let file = |path: &Path| std::fs::File::create(path).expect("an output file");
    let members = std::process::Command::new(scripts::pip_python())
        .args(["cluster_clients.py", "members"])
        .current_dir(scripts::kafka_dir())
        .env("SPATE_KAFKA", bootstrap.join(","))
        .env("SPATE_TOPIC", topic)
        .env("SPATE_GROUP", group)
        .env("SPATE_RECORDS", (2 * HALF).to_string())
        .env("SPATE_BUDGET", "150")
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .expect("start the group's members");
    let mut members = KillOnDrop(members);
    let seen = || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let last = text.lines().rev().find_map(|l| l.strip_prefix("{\"seen\": "));
        last.and_then(|n| n.trim_end_matches('}').parse::<usize>().ok()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen() < 300 && Instant::now() < deadline {
        assert!(
            members.0.try_wait().expect("the members' process").is_none(),
            "the members stopped: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dead = coordinator_of(&cluster, group, 1);
    let seen_at_death = seen();
    assert!((300..2 * HALF).contains(&seen_at_death), "killed while reading: {seen_at_death}");
    cluster.broker(dead).kill9();
    let survivor = all.into_iter().find(|n| *n != dead).expect("a survivor");
    let rest =
        [("SPATE_TOPIC", topic), ("SPATE_RECORDS", half.as_str()), ("SPATE_FIRST", half.as_str())];
    cluster.clients(survivor, "produce", &rest);

    let deadline = Instant::now() + Duration::from_secs(160);
    let status = loop {
        if let Some(status) = members.0.try_wait().expect("the members' process") {
            break status;
        }
        assert!(Instant::now() < deadline, "the members never finished");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    );
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
    assert!(status.success(), "the members failed after {seen_at_death} seen at the death of broker {dead}: {tail:?}\n{stderr}");
    let moved = coordinator_of(&cluster, group, survivor);
    assert_ne!(moved, dead, "the coordinator moved to a live broker");
    let acked = json_numbers(&stdout, "acked");
    assert!(!acked.is_empty(), "no commit was acknowledged: {tail:?}");
    let committed = json_numbers(
        &cluster.clients(survivor, "committed", &[("SPATE_TOPIC", topic), ("SPATE_GROUP", group)]),
        "committed",
    );
    for (partition, offset) in &acked {
        let now = committed.get(partition).copied().unwrap_or(-1);
        assert!(now >= *offset, "partition {partition}: {offset} acknowledged, {now} committed now (the coordinator on broker {dead} died)");
    }

    // The offsets log's compaction on its leader reaches its followers: the same offsets
    // committed again fill several segments; the leader snapshots the group and drops the old
    // segments, and each follower drops those below the leader's new log start.
    let again: Vec<(String, u32, u64)> = (committed.iter())
        .filter_map(|(p, o)| Some((topic.to_string(), p.parse().ok()?, u64::try_from(*o).ok()?)))
        .collect();
    let address = cluster.native(survivor as u16);
    run(|| async move {
        let client = Client::connect(&address).await.expect("connect");
        let leaders = spate::client::Leaders::new(client);
        for _ in 0..300 {
            let commit = |client: Client| {
                let again = again.clone();
                async move { client.commit_offsets(group, "", -1, again).await }
            };
            leaders.with_coordinator(group, commit).await.expect("commit again");
        }
    });
    let partition = spate::group::offsets::partition_for(group).to_string();
    let oldest_segment = |node: i32| {
        let dir = cluster.dir.path().join(format!("node{node}/__consumer_offsets/{partition}"));
        let files = std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok);
        let bases = files.filter_map(|f| {
            let name = f.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        });
        bases.min().unwrap_or(0)
    };
    let survivors: Vec<i32> = all.into_iter().filter(|n| *n != dead).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivors.iter().any(|n| oldest_segment(*n) == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let oldest: Vec<u64> = survivors.iter().map(|n| oldest_segment(*n)).collect();
    assert!(
        oldest.iter().all(|o| *o > 0),
        "the oldest offsets segment on brokers {survivors:?}: {oldest:?}"
    );
}

/// The node coordinating `group`, as broker `via` finds it.
fn coordinator_of(cluster: &Cluster, group: &str, via: i32) -> i32 {
    let address = cluster.native(via as u16);
    let group = group.to_string();
    let found = run(|| async move {
        Client::connect(&address).await.expect("connect").find_coordinator(&group).await
    });
    let found = found.expect("the group's coordinator");
    (1..=cluster.brokers.len() as i32)
        .find(|n| cluster.native(*n as u16) == found)
        .expect("a broker of the cluster")
}

/// The integers (null as -1) of the JSON object under `key` in the last line of `text` that has
/// it, by their keys: `{"key": {"0": 12, "1": null}}`.
fn json_numbers(text: &str, key: &str) -> std::collections::BTreeMap<String, i64> {
    let strings = json_strings(text, key).into_iter();
    strings.map(|(name, value)| (name, value.parse::<i64>().unwrap_or(-1))).collect()
}

/// Kafka's unclean election, off by default. Two topics of one partition on brokers 2 and 3
/// (`min.insync.replicas` 1): broker 3 stops, records are acknowledged by broker 2 alone, then
/// broker 2 dies and broker 3 returns. The topic that allows an unclean election is led by 3
/// at once, without what only 2 had, and takes writes; the other waits, leaderless, for 2. When
/// 2 returns it leads the second again with everything, and follows 3 on the first, its records
/// from after 3 left cut away.
#[test]
fn an_out_of_sync_replica_leads_only_where_unclean_election_is_enabled() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let one_insync = ("min.insync.replicas", "1");
    let unclean = ("unclean.leader.election.enable", "true");
    for (name, configs) in [("lax", vec![one_insync, unclean]), ("strict", vec![one_insync])] {
        let created =
            create_topic_with_configs_at(&cluster.kafka(1), name, (-1, -1), &[&[2, 3]], &configs);
        assert_eq!(created, (0, String::new()), "{name}");
    }
    let partition = |v: &MetadataView, name: &str| v.topics.get(name).map(|t| t.1[0].clone());
    let led_by = |v: &MetadataView, name: &str, leader: i32, isr: &[i32]| {
        partition(v, name).is_some_and(|p| p.1 == leader && p.4 == isr)
    };
    let both = |v: &MetadataView, leader: i32, isr: &[i32]| {
        led_by(v, "lax", leader, isr) && led_by(v, "strict", leader, isr)
    };
    cluster.settle_metadata(&all, "both in sync on 2 and 3", |v| both(v, 2, &[2, 3]));
    let produce = |cluster: &Cluster, topic: &str, seqs: std::ops::Range<u64>| {
        let (bootstrap, topic) = (cluster.brokers[0].addr.clone(), topic.to_string());
        run(|| async move {
            let client = Client::connect(&bootstrap).await.expect("connect");
            let leaders = spate::client::Leaders::new(client);
            let produced = produce_to_leader(&leaders, &topic, 0, seqs).await;
            produced.unwrap_or_else(|e| panic!("{topic}: {e}"));
        })
    };
    // The records' sequence numbers, as the leader serves them.
    let read = |cluster: &Cluster, topic: &str| -> Vec<u64> {
        let (bootstrap, topic) = (cluster.brokers[0].addr.clone(), topic.to_string());
        run(|| async move {
            let client = Client::connect(&bootstrap).await.expect("connect");
            let leaders = spate::client::Leaders::new(client);
            let fetched = leaders
                .with_leader(&topic, 0, |leader| {
                    let topic = topic.clone();
                    async move { leader.fetch(&topic, 0, 0, 1 << 20, 0).await }
                })
                .await
                .expect("fetch");
            let mut seqs = Vec::new();
            for batch in fetched.batches().expect("batches") {
                for record in batch.records() {
                    let header = record.headers().find(|(k, _)| *k == b"seq").expect("a seq");
                    seqs.push(u64::from_le_bytes(header.1.try_into().expect("8 bytes")));
                }
            }
            seqs
        })
    };
    for topic in ["lax", "strict"] {
        produce(&cluster, topic, 0..10);
    }
    // Broker 3 stops: 2 alone is in sync, and acknowledges 10 to 19 by itself.
    cluster.broker(3).stop();
    cluster.settle_metadata(&[1, 2], "2 alone in sync", |v| both(v, 2, &[2]));
    for topic in ["lax", "strict"] {
        produce(&cluster, topic, 10..20);
    }
    // Broker 2 dies; broker 3 returns, out of sync.
    cluster.broker(2).kill9();
    cluster.broker(3).restart();
    let unclean_view = cluster.settle_metadata(&[1, 3], "3 leads lax only", |v| {
        led_by(v, "lax", 3, &[3]) && partition(v, "strict").is_some_and(|p| p.1 == -1)
    });
    let lax_epoch = partition(&unclean_view, "lax").expect("lax").2;
    assert_eq!(read(&cluster, "lax"), (0..10).collect::<Vec<_>>(), "lax without 2's records");
    produce(&cluster, "lax", 20..25);
    // Broker 2 returns: it leads strict with everything, and follows 3 on lax.
    cluster.broker(2).restart();
    cluster.settle_metadata(&all, "strict led by 2, lax in sync on both", |v| {
        led_by(v, "strict", 2, &[2]) || led_by(v, "strict", 2, &[2, 3])
    });
    cluster.settle_metadata(&all, "lax in sync on both", |v| {
        partition(v, "lax").is_some_and(|p| p.1 == 3 && p.4.len() == 2 && p.2 == lax_epoch)
    });
    assert_eq!(read(&cluster, "strict"), (0..20).collect::<Vec<_>>(), "strict lost nothing");
    let lax: Vec<u64> = (0..10).chain(20..25).collect();
    assert_eq!(read(&cluster, "lax"), lax, "2 truncated its records after 3 left");
    // The replicas agree, byte for byte.
    for node in all {
        cluster.broker(node).stop();
    }
    let stored = |node: i32| stored_entries(&cluster.brokers[node as usize - 1].data_dir, "lax", 0);
    assert_eq!(stored(2), stored(3), "lax on brokers 2 and 3");
}

/// Leaders return to their preferred replicas (the first listed, where placement spread them):
/// with `auto.leader.rebalance.enable` off, a leader that stopped and came back stays a follower
/// until an administrator asks (confluent-kafka's `elect_leaders`, KIP-460; a partition led by
/// its preferred replica already answers ELECTION_NOT_NEEDED); with it on (checked every second
/// here), it leads again on its own once back in sync.
#[test]
fn leaders_return_to_their_preferred_replicas_when_asked_and_on_their_own() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    for auto in [false, true] {
        let settings = match auto {
            true => ["leader.imbalance.check.interval.seconds=1"],
            false => ["auto.leader.rebalance.enable=false"],
        };
        let mut cluster = Cluster::start_with(&settings);
        let all = [1, 2, 3];
        cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
        assert_eq!(create_topic_at(&cluster.kafka(1), "prefs", 3, 3, &[]), (0, String::new()));
        let partition =
            |v: &MetadataView, index: usize| v.topics.get("prefs").map(|t| t.1[index].clone());
        let placed =
            cluster.settle_metadata(&all, "prefs in sync, on its preferred leaders", |v| {
                v.topics
                    .get("prefs")
                    .is_some_and(|t| t.1.iter().all(|p| p.1 == p.3[0] && p.4.len() == 3))
            });
        let first = partition(&placed, 0).expect("partition 0").1;
        cluster.broker(first).stop();
        let others: Vec<i32> = all.into_iter().filter(|n| *n != first).collect();
        cluster.settle_metadata(&others, "partition 0 led by another", |v| {
            partition(v, 0).is_some_and(|p| p.1 >= 0 && p.1 != first)
        });
        cluster.broker(first).restart();
        let back_in_sync = |v: &MetadataView| partition(v, 0).is_some_and(|p| p.4.len() == 3);
        let in_sync = cluster.settle_metadata(&all, "partition 0 in sync on three", back_in_sync);
        let on_preferred = |v: &MetadataView| partition(v, 0).is_some_and(|p| p.1 == first);
        if auto {
            cluster.settle_metadata(&all, "back on its preferred replica on its own", on_preferred);
            continue;
        }
        assert!(!on_preferred(&in_sync), "moved back with auto.leader.rebalance.enable off");
        let env = [("SPATE_TOPIC", "prefs"), ("SPATE_PARTITIONS", "0,1")];
        let elected = json_strings(&cluster.clients(1, "elect", &env), "elected");
        assert_eq!(
            elected,
            [
                ("0".to_string(), "null".to_string()),
                ("1".to_string(), "ELECTION_NOT_NEEDED".to_string())
            ]
            .into_iter()
            .collect(),
        );
        cluster.settle_metadata(&all, "back on its preferred replica when asked", on_preferred);
    }
}

/// Replicas move between brokers (KIP-455), as an operator replaces a dead broker: the dead
/// broker's partitions go to a new one (kafka-python's admin client, and `spate topic
/// reassign`); each new replica catches up and joins the in-sync set, then the dead one is
/// dropped, nothing acknowledged lost. A move that cannot complete (its target keeps the dead
/// broker) is listed while in progress, and cancelled; bad moves get Kafka's codes. The dead
/// broker, back, removes the replicas it no longer holds.
#[test]
fn a_dead_brokers_replicas_move_to_a_new_broker_with_nothing_lost() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    cluster.add_fourth();
    let all = [1, 2, 3, 4];
    let created = create_topic_at(&cluster.kafka(1), "moved", -1, -1, &[&[1, 2, 3], &[3, 1, 2]]);
    assert_eq!(created, (0, String::new()));
    let partition =
        |v: &MetadataView, index: usize| v.topics.get("moved").map(|t| t.1[index].clone());
    cluster.settle_metadata(&all, "moved in sync on three", |v| {
        (0..2).all(|i| partition(v, i).is_some_and(|p| p.4.len() == 3))
    });
    let records = [("SPATE_TOPIC", "moved"), ("SPATE_RECORDS", "400")];
    cluster.clients(1, "produce", &records);

    cluster.broker(3).kill9();
    let live = [1, 2, 4];
    cluster.settle_metadata(&live, "broker 3 out of every in-sync set", |v| {
        (0..2).all(|i| partition(v, i).is_some_and(|p| p.4.len() == 2 && p.1 != 3))
    });
    let reassign = |moves: &str| {
        let env = [("SPATE_TOPIC", "moved"), ("SPATE_MOVES", moves)];
        json_strings(&cluster.clients(1, "reassign", &env), "reassigned")
    };
    let outcomes = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(p, o)| (p.to_string(), o.to_string())).collect()
    };
    assert_eq!(
        reassign(r#"{"0": null, "1": [1, 9], "7": [1, 2, 4]}"#),
        outcomes(&[
            ("0", "NoReassignmentInProgressError"),
            ("1", "InvalidReplicationAssignmentError"),
            ("7", "UnknownTopicOrPartitionError")
        ])
    );
    // Partition 0 to broker 4 in 3's place; partition 1 to 4 in 2's, keeping dead 3: that
    // move waits for 3.
    let accepted = reassign(r#"{"0": [1, 2, 4], "1": [4, 1, 3]}"#);
    assert_eq!(accepted, outcomes(&[("0", "null"), ("1", "null")]));
    cluster.settle_metadata(&live, "partition 0 on 1, 2 and 4, all in sync", |v| {
        partition(v, 0).is_some_and(|p| p.3 == [1, 2, 4] && p.4.len() == 3)
    });
    let listed = cluster.clients(1, "reassignments", &[("SPATE_TOPIC", "moved")]);
    assert!(
        listed.contains(r#""ongoing": {"1": [[4, 1, 3, 2], [4], [2]]}"#),
        "partition 1's move in progress, and only it:\n{listed}"
    );
    // Cancelled: back on the replicas it had (in the order the move left them, as Kafka's
    // controller reverts a move).
    assert_eq!(reassign(r#"{"1": null}"#), outcomes(&[("1", "null")]));
    cluster.settle_metadata(&live, "partition 1 back on 1, 3 and 2", |v| {
        partition(v, 1).is_some_and(|p| p.3 == [1, 3, 2])
    });
    // The operator's tool moves it to 4 in 3's place, and waits for the move.
    let moved = std::process::Command::new(BINARY)
        .args(["topic", "reassign", "moved", "--partition", "1", "--replicas", "4,1,2", "--wait"])
        .args(["--broker", &cluster.brokers[1].addr])
        .output()
        .expect("spate topic reassign");
    let said = String::from_utf8_lossy(&moved.stdout);
    assert!(moved.status.success(), "{said}{}", String::from_utf8_lossy(&moved.stderr));
    assert!(said.contains("every move is complete"), "{said}");
    let view = cluster.settle_metadata(&live, "partition 1 on 4, 1 and 2, all in sync", |v| {
        partition(v, 1).is_some_and(|p| p.3 == [4, 1, 2] && p.4.len() == 3)
    });
    assert!(cluster
        .clients(1, "reassignments", &[("SPATE_TOPIC", "moved")])
        .contains(r#""ongoing": {}"#));

    // Broker 3 returns holding nothing of the topic: it removes its old replicas.
    cluster.broker(3).restart();
    cluster.settle(&all, "four live brokers", |s| all_live(s, &all));
    cluster.settle_metadata(&all, "the same placement through all four", |v| {
        partition(v, 0) == partition(&view, 0) && partition(v, 1).is_some_and(|p| p.3 == [4, 1, 2])
    });
    let old = cluster.brokers[2].data_dir.join("moved");
    let deadline = Instant::now() + SETTLE_WAIT;
    while old.exists() {
        assert!(Instant::now() < deadline, "broker 3 kept {}", old.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every record acknowledged is there, once; the new replica holds the leader's entries.
    cluster.clients(2, "consume", &records);
    for node in all {
        cluster.broker(node).stop();
    }
    let entries = |node: i32, p: usize| {
        stored_entries(&cluster.brokers[node as usize - 1].data_dir, "moved", p)
    };
    for p in 0..2 {
        assert!(!entries(1, p).is_empty());
        assert_eq!(entries(4, p), entries(1, p), "partition {p} on broker 4");
    }
}

/// KIP-966: replication factor 3, `min.insync.replicas` 2. Broker 3 stops while the in-sync
/// set keeps two (it is not eligible to lead), and more records are acknowledged without it;
/// broker 2 stops when the set falls below two (it is eligible: the high watermark cannot move
/// without it); then the leader, broker 1, dies. Brokers 2 and 3 back, broker 2 leads, without
/// an unclean election and without waiting for broker 1, and every record acknowledged is
/// there, those broker 3 never had too.
#[test]
fn an_eligible_replica_leads_when_the_last_in_sync_one_dies() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let created = create_topic_at(&cluster.kafka(1), "elr", -1, -1, &[&[1, 2, 3]]);
    assert_eq!(created, (0, String::new()));
    let state = |v: &MetadataView| v.topics.get("elr").map(|t| t.1[0].clone());
    cluster.settle_metadata(&all, "elr in sync on three", |v| {
        state(v).is_some_and(|p| p.1 == 1 && p.4.len() == 3)
    });
    let records = [("SPATE_TOPIC", "elr"), ("SPATE_RECORDS", "300")];
    cluster.clients(1, "produce", &records);
    cluster.broker(3).stop();
    cluster.settle_metadata(&[1, 2], "3 out of sync", |v| state(v).is_some_and(|p| p.4 == [1, 2]));
    let without_3 = [("SPATE_TOPIC", "elr"), ("SPATE_RECORDS", "200"), ("SPATE_FIRST", "300")];
    cluster.clients(1, "produce", &without_3);
    cluster.broker(2).stop();
    cluster.settle_metadata(&[1], "2 out of sync", |v| state(v).is_some_and(|p| p.4 == [1]));
    cluster.broker(1).kill9();
    cluster.broker(3).restart();
    cluster.broker(2).restart();
    // (Broker 3 may catch up and rejoin the set before this looks: broker 2 leading is what
    // counts.)
    cluster.settle_metadata(&[2, 3], "led by eligible broker 2", |v| {
        state(v).is_some_and(|p| p.1 == 2 && p.4.contains(&2))
    });
    let log = cluster.brokers.iter().map(|b| b.stderr()).collect::<String>();
    assert!(log.contains("eligible leader replica"), "no eligible election logged");
    assert!(!log.contains("unclean leader election"), "an unclean election");
    // Broker 3 catches up from it: the set is whole again, and every record acknowledged is
    // read from the new leader. (Not by a consumer group: with broker 1 down, the offsets topic
    // cannot be created with its three replicas.)
    let rejoined = |v: &MetadataView| state(v).is_some_and(|p| p.1 == 2 && p.4 == [2, 3]);
    cluster.settle_metadata(&[2, 3], "3 back in sync", rejoined);
    let (_, stored) = stored_records(&cluster.brokers[1].addr, "elr", 0);
    let values: std::collections::BTreeSet<Vec<u8>> =
        stored.into_values().map(|(value, _)| value).collect();
    let produced = (0..500).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(values, produced, "the records read from broker 2");
    cluster.broker(1).restart();
    cluster
        .settle_metadata(&all, "all in sync again", |v| state(v).is_some_and(|p| p.4.len() == 3));
}

/// A broker whose disk fills is fenced while its writes are refused (`log/health.rs`, after
/// KIP-858's failed log directory), with no lag to wait out (`replica.lag.time.max.ms` is ten
/// minutes here): the partition it led moves to an in-sync replica, the in-sync set it shared as
/// a follower drops it, and acks=all producers go on through the other two. Once space is freed
/// it is unfenced, catches up and is in sync again, and each topic holds exactly the records
/// acknowledged, at their offsets. Node 4, which is not a controller voter, has the small disk:
/// a voter that cannot write its metadata log stops.
#[test]
fn a_broker_whose_disk_fills_is_fenced_until_it_can_write_again() {
    use common::small_fs::SmallFs;
    use spate::record::OwnedRecord;
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let fs_dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = SmallFs::mount_or_skip(&fs_dir.path().join("node4-fs"), 64) else { return };
    let mut cluster = Cluster::start_with(&["replica.lag.time.max.ms=600000"]);
    cluster.add_fourth_on(&fs.path.join("node4"));
    let all = [1, 2, 3, 4];
    // Node 4 is the preferred leader of "led" and a follower of "followed".
    let topics = ["led", "followed"];
    for (name, replicas) in topics.into_iter().zip([[4, 1, 2], [1, 2, 4]]) {
        let created = create_topic_at(&cluster.kafka(1), name, -1, -1, &[&replicas]);
        assert_eq!(created, (0, String::new()), "{name}");
    }
    let partition = |v: &MetadataView, name: &str| v.topics.get(name).map(|t| t.1[0].clone());
    let in_sync_on = |v: &MetadataView, name: &str, node: i32| {
        partition(v, name).is_some_and(|p| p.4.contains(&node))
    };
    cluster.settle_metadata(&all, "both in sync on three, node 4 leading led", |v| {
        partition(v, "led").is_some_and(|p| p.1 == 4 && p.4.len() == 3)
            && partition(v, "followed").is_some_and(|p| p.4.len() == 3)
    });
    // Each record a batch of its own, of 256 KiB: more than node 4's segments have room for
    // once its disk is full. (topic, offset, seq) of every acknowledged one.
    let produce = |cluster: &Cluster,
                   seqs: std::ops::Range<u64>|
     -> Vec<(&'static str, u64, u64)> {
        let bootstrap = cluster.brokers[0].addr.clone();
        run(|| async move {
            let leaders =
                spate::client::Leaders::new(Client::connect(&bootstrap).await.expect("connect"));
            let mut acked = Vec::new();
            for seq in seqs {
                for topic in topics {
                    let record = OwnedRecord {
                        key: None,
                        value: Some(vec![seq as u8; 256 * 1024]),
                        headers: vec![(b"seq".to_vec(), seq.to_le_bytes().to_vec())],
                        timestamp: 1_700_000_000_000,
                    };
                    let base = leaders
                        .with_leader(topic, 0, |client| {
                            let batch = common::batch_of([record.clone()]);
                            async move {
                                let acks = spate::native::messages::Acks::All;
                                client.produce(topic, 0, acks, batch).await
                            }
                        })
                        .await
                        .unwrap_or_else(|e| panic!("record {seq} to {topic}: {e}"))
                        .expect("an answer with acks=all");
                    acked.push((topic, base, seq));
                }
            }
            acked
        })
    };
    let mut acked = produce(&cluster, 0..10);
    // Node 4's disk fills: its writes are refused, and producing goes on without it.
    let filler = fs.fill(0);
    acked.extend(produce(&cluster, 10..40));
    cluster.settle_metadata(
        &[1, 2, 3],
        "node 4 out of both in-sync sets, led led by another",
        |v| {
            let led = partition(v, "led");
            led.is_some_and(|p| p.1 >= 0 && p.1 != 4)
                && !in_sync_on(v, "led", 4)
                && !in_sync_on(v, "followed", 4)
        },
    );
    let status = cluster.status(1).expect("the cluster's status");
    assert_eq!(state(&status, 4).map(|s| s.0), Some("fenced"), "{status:?}");
    assert!(cluster.broker(4).stderr().contains("the storage is failing"));
    // Space freed: node 4 is unfenced, catches up and is in sync again.
    std::fs::remove_file(&filler).expect("the filler file");
    cluster.settle_metadata(&all, "node 4 in sync on both again", |v| {
        in_sync_on(v, "led", 4) && in_sync_on(v, "followed", 4)
    });
    assert!(cluster.broker(4).stderr().contains("the storage takes writes again"));
    acked.extend(produce(&cluster, 40..45));
    for topic in topics {
        let bootstrap = cluster.brokers[0].addr.clone();
        let read = run(|| async move {
            let leaders =
                spate::client::Leaders::new(Client::connect(&bootstrap).await.expect("connect"));
            common::read_all_from_leaders(&leaders, topic, 0, 0).await
        });
        let stored: Vec<(u64, u64)> = read
            .iter()
            .map(|(offset, record)| {
                let seq = record.headers.first().expect("a seq header").1.as_slice();
                (*offset, u64::from_le_bytes(seq.try_into().expect("8 bytes")))
            })
            .collect();
        let expected: Vec<(u64, u64)> =
            acked.iter().filter(|a| a.0 == topic).map(|(_, offset, seq)| (*offset, *seq)).collect();
        assert_eq!(stored, expected, "{topic}: exactly the acknowledged records, in order");
    }
}

/// The values of the JSON object under `key` in the last line of `text` that has it, as text
/// (strings unquoted): `{"key": {"0": null, "1": "NAME"}}`.
fn json_strings(text: &str, key: &str) -> std::collections::BTreeMap<String, String> {
    let opening = format!("\"{key}\": {{");
    let Some(line) = text.lines().rev().find(|l| l.contains(&opening)) else {
        return Default::default();
    };
    let start = line.find(&opening).map(|at| at + opening.len()).unwrap_or(0);
    let body = &line[start..start + line[start..].find('}').unwrap_or(0)];
    body.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once(':')?;
            Some((
                name.trim().trim_matches('"').to_string(),
                value.trim().trim_matches('"').to_string(),
            ))
        })
        .collect()
}

/// A follower away while its leader's retention deleted what it lacks finds its log ending
/// before the leader's log start: it starts its log over there (Kafka's
/// `truncateFullyAndStartAt`), copies the rest, and rejoins the in-sync set; where both still
/// hold an entry (retention trims each on its own), it is the leader's, byte for byte.
#[test]
fn a_follower_behind_its_leaders_log_start_starts_over_there() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start_with(&["log.retention.check.interval.ms=300"]);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let configs = [("segment.bytes", "16384"), ("retention.bytes", "32768")];
    let created =
        create_topic_with_configs_at(&cluster.kafka(1), "short", (-1, -1), &[&[1, 2, 3]], &configs);
    assert_eq!(created, (0, String::new()));
    let in_sync = |v: &MetadataView| {
        v.topics.get("short").is_some_and(|t| t.1[0].1 == 1 && t.1[0].4.len() == 3)
    };
    cluster.settle_metadata(&all, "short in sync on three", in_sync);
    let bootstrap = cluster.brokers[0].addr.clone();
    // Batches of 20 records of about 100 to 300 bytes to partition 0; answers the leader's log
    // start after them.
    let produce = |seqs: std::ops::Range<u64>| {
        let bootstrap = bootstrap.clone();
        run(|| async move {
            let client = Client::connect(&bootstrap).await.expect("connect");
            let leaders = spate::client::Leaders::new(client);
            for first in seqs.step_by(20) {
                let produced = produce_to_leader(&leaders, "short", 0, first..first + 20).await;
                produced.unwrap_or_else(|e| panic!("batch {first}: {e}"));
            }
            let earliest = spate::native::messages::OFFSET_EARLIEST;
            let start = leaders
                .with_leader("short", 0, |leader| async move {
                    leader.list_offset("short", 0, earliest).await
                })
                .await;
            start.expect("the leader's log start")
        })
    };
    produce(0..100);
    cluster.broker(3).stop();
    cluster.settle_metadata(&[1, 2], "3 out of sync", |v| {
        v.topics.get("short").is_some_and(|t| t.1[0].4.len() == 2)
    });
    // Enough that the leader's retention deletes segments broker 3 never had.
    let mut first = 100;
    let deadline = Instant::now() + SETTLE_WAIT;
    while produce(first..first + 400) <= 100 {
        assert!(Instant::now() < deadline, "the leader's retention never passed offset 100");
        first += 400;
    }
    cluster.broker(3).restart();
    cluster.settle_metadata(&all, "3 in sync again", in_sync);
    let log = cluster.broker(3).stderr();
    assert!(log.contains("started over there"), "broker 3 did not start over:\n{log}");
    for node in all {
        cluster.broker(node).stop();
    }
    // Retention goes on trimming each replica on its own: where both hold an entry, it is the
    // same, and broker 3 holds nothing from before its start over.
    let entries =
        |node: i32| stored_entries(&cluster.brokers[node as usize - 1].data_dir, "short", 0);
    let (leader, follower) = (entries(1), entries(3));
    let leaders: std::collections::BTreeMap<u64, Vec<u8>> = leader.into_iter().collect();
    for (next_offset, entry) in &follower {
        assert!(*next_offset > 100, "broker 3 kept an entry from before its start over");
        if let Some(theirs) = leaders.get(next_offset) {
            assert_eq!(theirs, entry, "the entry ending at {next_offset} differs on broker 3");
        }
    }
}

/// A follower fetches again while what it appended syncs only when the leader holds more: a
/// fetch parked at a leader with nothing more to send would hold back the report of that sync,
/// and with it every acks=all answer, until `replica.fetch.wait.max.ms` passed (30 s here, the
/// most a fetch may wait). First one producer sends acks=all batches one after another (each
/// answer brings all the leader has: the follower waits for its sync, then reports it); then
/// three keep batches in flight to a partition whose followers take one entry a fetch
/// (`replica.fetch.max.bytes=1`), so the leader mostly holds more than an answer brings. Every
/// batch is answered well within one such wait.
#[test]
fn acks_all_answers_do_not_wait_out_a_parked_replica_fetch() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let fetch_wait = Duration::from_secs(30);
    let wait_setting = format!("replica.fetch.wait.max.ms={}", fetch_wait.as_millis());
    let mut cluster = Cluster::start_with(&[wait_setting.as_str(), "replica.fetch.max.bytes=1"]);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    let created = create_topic_at(&cluster.kafka(1), "prompt", -1, -1, &[&[1, 2, 3]]);
    assert_eq!(created, (0, String::new()));
    cluster.settle_metadata(&all, "prompt in sync on three", |v| {
        v.topics.get("prompt").is_some_and(|t| t.1[0].1 == 1 && t.1[0].4.len() == 3)
    });
    let bootstrap = cluster.brokers[0].addr.clone();
    run(|| async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let leaders = std::rc::Rc::new(spate::client::Leaders::new(client));
        for (phase, producers) in [(0u64, 1u64), (1, 3)] {
            let tasks: Vec<_> = (0..producers)
                .map(|producer| {
                    let leaders = leaders.clone();
                    let seqs = (phase * 10 + producer) * 1000..(phase * 10 + producer) * 1000 + 100;
                    glommio::spawn_local(async move {
                        for first in seqs.step_by(5) {
                            let started = Instant::now();
                            let produced =
                                produce_to_leader(&leaders, "prompt", 0, first..first + 5).await;
                            produced.unwrap_or_else(|e| panic!("batch {first}: {e}"));
                            let took = started.elapsed();
                            assert!(took < fetch_wait / 2, "batch {first} took {took:?}");
                        }
                    })
                    .detach()
                })
                .collect();
            for task in tasks {
                task.await.expect("a producer task");
            }
        }
    });
    for node in all {
        cluster.broker(node).stop();
    }
}

/// The fault run (issue 16): three brokers, three topics of three partitions with replication
/// factor 3 and `min.insync.replicas` 2, written by idempotent acks=all producers of
/// confluent-kafka and kafka-python (`crash_producer.py`) and by the native client (acks=all,
/// not idempotent), the first also read by a native reader, while the harness injects at random
/// moments (seeded: `SPATE_TEST_SEED` replays a run) `kill -9` of a partition's leader, `kill -9`
/// of the active controller, a leader paused (SIGSTOP) past its session and resumed (a zombie),
/// clean restarts, and, as root, a leader cut off from the other brokers (nftables rules in its
/// network namespace, `common::netns`) until they fence it, then healed: `SPATE_FAULT_CYCLES` of
/// them (20 in CI; the long form runs hundreds).
/// Afterwards: every acknowledged record of the idempotent producers is stored exactly once, in
/// order, at its acknowledged offset (their own check); every one the native writer had
/// acknowledged is at its offset, and those offsets only grew; everything the reader saw is
/// still there at the offset it saw it; and with the brokers stopped, the three replicas' logs
/// of every topic hold the same entries, byte for byte, below the high watermark.
#[test]
fn acknowledged_records_survive_random_faults_and_replicas_agree() {
    let _one_cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let python = scripts::require_pip_confluent();
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let cycles = env("SPATE_FAULT_CYCLES", 20);
    let seed = env("SPATE_TEST_SEED", 0xfa17_5eed);
    eprintln!("fault run: {cycles} cycles, SPATE_TEST_SEED={seed}");
    let mut rng = seed.max(1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // As root, each broker in a network namespace of its own, to be cut off from the others.
    let netns = Netns::create(&[1, 2, 3])
        .map_err(|why| common::skip_without_privilege("cut brokers off from each other", &why))
        .ok();
    let faults = if netns.is_some() { 5 } else { 4 };
    eprintln!("network cuts: {}", if faults == 5 { "yes" } else { "no (not root)" });
    let mut cluster = Cluster::start_in(&[], netns);
    let all = [1, 2, 3];
    cluster.settle(&all, "three live brokers", |s| s.leader.is_some() && all_live(s, &all));
    // One topic per producer: confluent-kafka's and kafka-python's idempotent producers (each in
    // `crash_producer.py`), and the native client's (not idempotent: a retried batch may be
    // stored twice, but an acknowledged one is where it was acknowledged).
    const TOPIC: &str = "faults";
    const KAFKA_PYTHON_TOPIC: &str = "faults-kafka-python";
    const NATIVE_TOPIC: &str = "faults-native";
    const TOPICS: [&str; 3] = [TOPIC, KAFKA_PYTHON_TOPIC, NATIVE_TOPIC];
    const PARTITIONS: usize = 3;
    let created = create_topic_at(&cluster.kafka(1), NATIVE_TOPIC, PARTITIONS as i32, 3, &[]);
    assert_eq!(created, (0, String::new()));
    let stop_file = cluster.dir.path().join("stop");
    let bootstrap: Vec<String> = all.iter().map(|n| cluster.kafka(*n)).collect();
    let budget = 120 + 20 * cycles;
    let start_producer = |client: &str, topic: &str| {
        let producer = std::process::Command::new(&python)
            .arg("crash_producer.py")
            .current_dir(scripts::kafka_dir())
            .env("SPATE_KAFKA", bootstrap.join(","))
            .env("SPATE_CLIENT", client)
            .env("SPATE_TOPIC", topic)
            .env("SPATE_PARTITIONS", PARTITIONS.to_string())
            .env("SPATE_REPLICAS", "3")
            .env("SPATE_STOP_FILE", &stop_file)
            .env("SPATE_CRASH_BUDGET_SECS", budget.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the producer script");
        // Killed however the test ends: the next test may take the same ports.
        let mut producer = KillOnDrop(producer);
        let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = drain(Box::new(producer.0.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(producer.0.stderr.take().expect("stderr")));
        (client.to_string(), producer, stdout, stderr)
    };
    let producers = [
        start_producer("confluent-kafka", TOPIC),
        start_producer("kafka-python", KAFKA_PYTHON_TOPIC),
    ];
    let in_sync = |v: &MetadataView| {
        v.brokers == all
            && TOPICS.iter().all(|topic| {
                v.topics.get(*topic).is_some_and(|t| {
                    t.1.len() == PARTITIONS && t.1.iter().all(|p| p.1 >= 0 && p.4.len() == 3)
                })
            })
    };
    cluster.settle_metadata(&all, "the topics in sync on three", in_sync);

    // A native reader beside it, recording what it saw: (partition, offset) -> value. It stops
    // however the test ends.
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _stop_reading = StopOnDrop(reading.clone());
    let natives: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let reader = {
        let (reading, natives) = (reading.clone(), natives.clone());
        std::thread::spawn(move || read_while(&natives, TOPIC, PARTITIONS as u32, &reading))
    };
    let writer = {
        let reading = reading.clone();
        std::thread::spawn(move || write_while(&natives, NATIVE_TOPIC, PARTITIONS as u32, &reading))
    };

    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(300 + next() % 700));
        let live = metadata_at(&cluster.kafka(1 + (next() % 3) as i32));
        let partition = (next() % PARTITIONS as u64) as usize;
        let leader = live.topics[TOPIC].1[partition].1;
        let controller = cluster.status(1).ok().and_then(|s| s.leader).map(|n| n.0);
        let (what, victim) = match next() % faults {
            0 => ("kill -9 of the leader", leader),
            1 => ("kill -9 of the active controller", controller.unwrap_or(leader)),
            2 => ("SIGSTOP of the leader past its session", leader),
            3 => ("a clean restart", 1 + (next() % 3) as i32),
            _ => ("a network cut of the leader from the others past its session", leader),
        };
        eprintln!("cycle {cycle}: {what} (broker {victim}, {TOPIC}-{partition} led by {leader})");
        if let Some(netns) = cluster.netns.as_ref().filter(|_| what.contains("network cut")) {
            // Clients still reach it: a zombie leader that must acknowledge nothing more. The
            // others fence it once its session lapses.
            netns.cut(victim as u16).expect("cut the broker off");
            let others: Vec<i32> = all.into_iter().filter(|n| *n != victim).collect();
            let fenced = format!("broker {victim} fenced behind its cut");
            cluster.settle_metadata(&others, &fenced, |v| v.brokers == others);
            std::thread::sleep(Duration::from_millis(next() % 1000));
            netns.heal(victim as u16).expect("heal the cut");
            let again = format!("in sync again after cycle {cycle}");
            cluster.settle_metadata(&all, &again, in_sync);
            continue;
        }
        let broker = cluster.broker(victim);
        if what.starts_with("SIGSTOP") {
            let pid = broker.pid().to_string();
            assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().is_ok());
            std::thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 500));
            assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().is_ok());
        } else if what.starts_with("kill") {
            broker.kill9();
            broker.restart();
        } else {
            broker.stop();
            broker.restart();
        }
        cluster.settle_metadata(&all, &format!("in sync again after cycle {cycle}"), in_sync);
    }

    std::fs::write(&stop_file, b"stop").expect("the stop file");
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(budget + 60);
    for (client, mut producer, stdout, stderr) in producers {
        let status = loop {
            if let Some(status) = producer.0.try_wait().expect("the producer") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (stdout, stderr) = (stdout.join().expect("stdout"), stderr.join().expect("stderr"));
        assert!(
            status.is_some_and(|s| s.success()) && stdout.contains("PASS crash_producer"),
            "the {client} producer's check (SPATE_TEST_SEED={seed}):\n{stdout}\n{stderr}"
        );
        let oks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok")).collect();
        eprintln!("{client}: {}", oks.join("; "));
    }
    let seen = reader.join().expect("the reader");
    assert!(!seen.is_empty(), "the reader saw nothing");
    let written = writer.join().expect("the native writer");
    assert!(!written.is_empty(), "the native writer had nothing acknowledged");

    // What the reader saw is where it saw it, and what the native writer had acknowledged is
    // where it was acknowledged; the leaders' logs up to their high watermarks.
    cluster.settle_metadata(&all, "settled", in_sync);
    let bootstrap = cluster.brokers[0].addr.clone();
    let mut high_watermarks = std::collections::BTreeMap::new();
    for topic in TOPICS {
        for partition in 0..PARTITIONS as u32 {
            let (end, stored) = stored_records(&bootstrap, topic, partition);
            high_watermarks.insert((topic, partition as usize), end);
            if topic == TOPIC {
                for ((p, offset), value) in seen.range((partition, 0)..(partition + 1, 0)) {
                    assert_eq!(
                        stored.get(offset).map(|(value, _)| value),
                        Some(value),
                        "{topic}-{p}: the reader saw {value:?} at {offset}, which the log no \
                         longer holds (SPATE_TEST_SEED={seed})"
                    );
                }
            }
            if topic == NATIVE_TOPIC {
                let mut last = None;
                for (p, offset, seq) in written.iter().filter(|(p, _, _)| *p == partition) {
                    assert_eq!(
                        stored.get(offset).and_then(|(_, seq)| *seq),
                        Some(*seq),
                        "{topic}-{p}: record {seq} acknowledged at {offset} is not there \
                         (SPATE_TEST_SEED={seed})"
                    );
                    assert!(last < Some(*offset), "{topic}-{p}: offsets went back to {offset}");
                    last = Some(*offset);
                }
            }
        }
    }
    eprintln!(
        "the reader saw {} records and the native writer had {} acknowledged, all still there; \
         high watermarks {high_watermarks:?}",
        seen.len(),
        written.len()
    );

    // The replicas, stopped, hold the same entries below the high watermark.
    for node in all {
        cluster.broker(node).stop();
    }
    for ((topic, partition), high_watermark) in &high_watermarks {
        let logs: Vec<Vec<(u64, Vec<u8>)>> = all
            .iter()
            .map(|n| stored_entries(&cluster.brokers[*n as usize - 1].data_dir, topic, *partition))
            .collect();
        let below = |log: &Vec<(u64, Vec<u8>)>| -> Vec<(u64, Vec<u8>)> {
            log.iter().filter(|(next, _)| next <= high_watermark).cloned().collect()
        };
        let first = below(&logs[0]);
        assert_eq!(
            first.last().map(|(next, _)| *next),
            Some(*high_watermark),
            "{topic}-{partition}"
        );
        for (n, log) in all.iter().zip(&logs).skip(1) {
            assert!(
                below(log) == first,
                "{topic}-{partition}: broker {n}'s entries below {high_watermark} differ from \
                 broker 1's (SPATE_TEST_SEED={seed})"
            );
        }
    }
}

/// Every record of `topic`-`partition` below its high watermark, read from its leader through
/// `bootstrap`: the high watermark, and per offset the value and the `seq` header if any.
#[allow(clippy::type_complexity)]
fn stored_records(
    bootstrap: &str,
    topic: &str,
    partition: u32,
) -> (u64, std::collections::BTreeMap<u64, (Vec<u8>, Option<u64>)>) {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    run(|| async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let leaders = spate::client::Leaders::new(client);
        let topic = topic.as_str();
        let fetch = |offset| {
            leaders.with_leader(topic, partition, move |leader| async move {
                leader.fetch(topic, partition, offset, 1 << 20, 0).await
            })
        };
        let end = fetch(0).await.expect("the high watermark").high_watermark;
        let mut records = std::collections::BTreeMap::new();
        let deadline = Instant::now() + SETTLE_WAIT;
        let mut offset = 0;
        while offset < end {
            assert!(Instant::now() < deadline, "{topic}-{partition}: stuck at {offset}/{end}");
            for batch in fetch(offset).await.expect("fetch").batches().expect("batches") {
                for record in batch.records().filter(|r| r.offset >= offset) {
                    let value = record.value().unwrap_or_default().to_vec();
                    let seq = (record.headers().find(|(k, _)| *k == b"seq"))
                        .and_then(|(_, v)| Some(u64::from_le_bytes(v.try_into().ok()?)));
                    records.insert(record.offset, (value, seq));
                }
            }
            offset = records.keys().next_back().map_or(offset, |o| o + 1);
        }
        (end, records)
    })
}

/// Reads every partition of `topic` from its leader until `reading` is cleared; answers what
/// it saw, (partition, offset) -> value. When a leader or the broker it learns leaders from goes
/// away, it goes on through another broker.
fn read_while(
    brokers: &[String],
    topic: &str,
    partitions: u32,
    reading: &std::sync::atomic::AtomicBool,
) -> std::collections::BTreeMap<(u32, u64), Vec<u8>> {
    use std::sync::atomic::Ordering;
    let mut seen = std::collections::BTreeMap::new();
    let mut next = vec![0u64; partitions as usize];
    let mut round = 0usize;
    while reading.load(Ordering::Relaxed) {
        let bootstrap = brokers[round % brokers.len()].clone();
        round += 1;
        let (read, reached) = run(|| async {
            let mut read = Vec::new();
            let Ok(client) = Client::connect(&bootstrap).await else {
                return (read, next.clone());
            };
            let leaders = spate::client::Leaders::new(client);
            let mut reached = next.clone();
            'reading: while reading.load(Ordering::Relaxed) {
                for partition in 0..partitions {
                    let offset = reached[partition as usize];
                    let fetched = leaders
                        .with_leader(topic, partition, |leader| async move {
                            leader.fetch(topic, partition, offset, 1 << 20, 100).await
                        })
                        .await;
                    let Ok(fetched) = fetched else { break 'reading };
                    let Ok(batches) = fetched.batches() else { break 'reading };
                    for batch in batches {
                        for record in batch.records().filter(|r| r.offset >= offset) {
                            let value = record.value().unwrap_or_default().to_vec();
                            read.push(((partition, record.offset), value));
                            reached[partition as usize] = record.offset + 1;
                        }
                    }
                }
            }
            (read, reached)
        });
        seen.extend(read);
        next = reached;
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// Writes batches of 20 sequenced records (`common::record`) to every partition of `topic` in
/// turn with the native client and acks=all until `writing` is cleared, going on through
/// another broker when one goes away; answers what was acknowledged: (partition, offset, seq).
/// Not idempotent: a batch whose answer was lost and that is sent again may be stored twice.
fn write_while(
    brokers: &[String],
    topic: &str,
    partitions: u32,
    writing: &std::sync::atomic::AtomicBool,
) -> Vec<(u32, u64, u64)> {
    use std::sync::atomic::Ordering;
    const BATCH: u64 = 20;
    let mut acked = Vec::new();
    let mut next_seq = 0u64;
    let mut round = 0usize;
    while writing.load(Ordering::Relaxed) {
        let bootstrap = brokers[round % brokers.len()].clone();
        round += 1;
        let (written, reached) = run(|| async {
            let mut written = Vec::new();
            let mut seq = next_seq;
            let Ok(client) = Client::connect(&bootstrap).await else { return (written, seq) };
            let leaders = spate::client::Leaders::new(client);
            while writing.load(Ordering::Relaxed) {
                let partition = ((seq / BATCH) % u64::from(partitions)) as u32;
                let first = seq;
                seq += BATCH;
                let produced =
                    produce_to_leader(&leaders, topic, partition, first..first + BATCH).await;
                match produced {
                    Ok(Some(base)) => {
                        written.extend((0..BATCH).map(|i| (partition, base + i, first + i)));
                    }
                    // Not acknowledged: it may or may not be stored; its sequence numbers are
                    // not used again.
                    Ok(None) | Err(_) => break,
                }
            }
            (written, seq)
        });
        acked.extend(written);
        next_seq = reached;
        std::thread::sleep(Duration::from_millis(50));
    }
    acked
}

/// Produces records `seqs` (`common::record`) to `topic`-`partition` as one batch with
/// acks=all, to its leader (found again through `leaders` when it moves): the base offset.
async fn produce_to_leader(
    leaders: &spate::client::Leaders,
    topic: &str,
    partition: u32,
    seqs: std::ops::Range<u64>,
) -> Result<Option<u64>, spate::client::ClientError> {
    leaders
        .with_leader(topic, partition, |leader| {
            let batch = common::batch_of(seqs.clone().map(|seq| common::record(partition, seq)));
            async move {
                leader.produce(topic, partition, spate::native::messages::Acks::All, batch).await
            }
        })
        .await
}

/// The entries of `topic`-`partition` in a stopped broker's data directory, read from its
/// segment files as they are (each checked against its checksum): (next offset, entry bytes).
fn stored_entries(data_dir: &Path, topic: &str, partition: usize) -> Vec<(u64, Vec<u8>)> {
    use spate::record::entry::{entries, Check};
    let dir = data_dir.join(topic).join(partition.to_string());
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut stored = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).expect("a segment file");
        // A segment ends at its first bad entry: zeros past its end, or a torn last one.
        for entry in entries(&bytes, Check::Checksum).map_while(Result::ok) {
            stored.push((entry.header.next_offset().0, entry.bytes.to_vec()));
        }
    }
    stored
}
