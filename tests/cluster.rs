//! Several brokers as one cluster: real `spate` processes on loopback, each a controller voter,
//! electing an active controller over the native protocol, registering, heartbeating, being
//! fenced when silent, stopping cleanly with a controlled shutdown, and surviving the active
//! controller's `kill -9`.
//!
//! On a 2-core machine each broker gets one shard on alternating cores, and one of them two
//! shards, so Raft messages and controller requests arriving on shard 1 are forwarded to the
//! voter on shard 0. One cluster runs at a time (`CLUSTER`), on ports below the kernel's
//! ephemeral range so that no client connection can take them while a broker is down.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{run, Broker, BINARY};
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
    _dir: tempfile::TempDir,
}

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
        let base = port_base(6);
        let native = |n: u16| format!("127.0.0.1:{}", base + 2 * (n - 1));
        let kafka = |n: u16| format!("127.0.0.1:{}", base + 2 * (n - 1) + 1);
        let voters: Vec<String> = (1..=3).map(|n| format!("{n}@{}", native(n))).collect();
        let voters = format!("controller.quorum.voters={}", voters.join(","));
        let session = format!("broker.session.timeout.ms={SESSION_TIMEOUT_MS}");
        let heartbeat = format!("broker.heartbeat.interval.ms={HEARTBEAT_MS}");
        let brokers = (1..=3u16)
            .map(|n| {
                let node = format!("node.id={n}");
                let cores = match n {
                    1 => "0",
                    2 => "1",
                    _ => "0-1",
                };
                let data_dir = dir.path().join(format!("node{n}"));
                let args =
                    ["--set", &node, "--set", &voters, "--set", &session, "--set", &heartbeat];
                Broker::start_at(&data_dir, (&native(n), &kafka(n)), cores, &args)
            })
            .collect();
        Cluster { brokers, _dir: dir }
    }

    fn broker(&mut self, node: i32) -> &mut Broker {
        &mut self.brokers[node as usize - 1]
    }

    fn status(&self, node: i32) -> Result<ClusterStatus, String> {
        let addr = self.brokers[node as usize - 1].addr.clone();
        run(|| async move {
            let client = Client::connect(&addr).await.map_err(|e| e.to_string())?;
            client.cluster_status().await.map_err(|e| e.to_string())
        })
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
                        check(v) && v.leader == first.leader && v.brokers == first.brokers
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
    for b in &first.brokers {
        let addr = &cluster.brokers[b.node.0 as usize - 1].addr;
        assert_eq!(format!("{}:{}", b.endpoints.native.0, b.endpoints.native.1), *addr);
    }

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
    let view = cluster.status(asked[0]).expect("status");
    assert_eq!(state(&view, stopping).map(|s| s.0), Some("shut down"), "{view:?}");

    // Every broker stopped and started again: the same cluster, from the metadata log.
    for node in asked.iter() {
        cluster.broker(*node).stop();
    }
    let before_restart = view;
    for node in all {
        cluster.broker(node).restart();
    }
    let again = cluster.settle(&all, "the whole cluster back", |s| all_live(s, &all));
    for node in all {
        let (before, after) = (state(&before_restart, node), state(&again, node));
        assert!(
            after.expect("still known").1 > before.expect("known").1,
            "node {node} registered anew"
        );
    }
    assert!(again.applied > before_restart.applied, "the log replayed and grew");
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
