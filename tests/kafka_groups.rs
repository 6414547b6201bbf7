//! Consumer groups with real Kafka clients against the real binary's Kafka listener: the classic
//! group protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup), committed
//! offsets (OffsetCommit, OffsetFetch, durable across a kill -9), and the group admin APIs
//! (ListGroups, DescribeGroups, DeleteGroups). Each test starts a broker with
//! `group.initial.rebalance.delay.ms=300` and runs one script from tests/kafka/ (which prints what
//! it checks, and `rebalance_ms=<n>` timings, and exits non-zero on any mismatch). A missing
//! client fails the test rather than skipping it; `.ci/run` installs the clients with
//! tests/kafka/install-clients.sh.

mod common;

use common::scripts::{
    require_debian_confluent, require_kafka_python, require_kafkajs, require_pip_confluent,
    run_one, run_script, serial,
};
use common::Broker;

/// Broker settings for every test: a short initial rebalance delay (Kafka's default is 3 s).
const BROKER_ARGS: &[&str] =
    &["--set", "group.initial.rebalance.delay.ms=300", "--set", "num.partitions=3"];

/// Three confluent-kafka (PyPI) member processes: assignment, a SIGKILLed member's partitions
/// moving after its session timeout, a new member joining, no record skipped.
#[test]
fn members_confluent_pip() {
    let python = require_pip_confluent();
    run_one("groups_members_pip", BROKER_ARGS, &python, &["groups_members.py"]);
}

/// The same with Debian's confluent-kafka 1.7 (librdkafka 2.0.2).
#[test]
fn members_confluent_debian() {
    let python = require_debian_confluent();
    run_one("groups_members_debian", BROKER_ARGS, python, &["groups_members.py"]);
}

/// kafka-python 3.x: two members, LeaveGroup hands everything to the other, a new consumer
/// resumes at the committed offsets.
#[test]
fn kafka_python() {
    let python = require_kafka_python();
    run_one("groups_kafka_python", BROKER_ARGS, &python, &["groups_kafka_python.py"]);
}

/// Independent groups, auto.offset.reset, OffsetFetch with nothing committed, ListGroups,
/// DescribeGroups, DeleteGroups (confluent-kafka from PyPI).
#[test]
fn semantics_confluent_pip() {
    let python = require_pip_confluent();
    run_one("groups_semantics", BROKER_ARGS, &python, &["groups_semantics.py"]);
}

/// A kafkajs consumer group: two members, every record, commits, describeGroups, fetchOffsets.
#[test]
fn kafkajs() {
    require_kafkajs();
    run_one("kafkajs_group", BROKER_ARGS, "node", &["node/kafkajs_group.js"]);
}

/// Committed offsets survive kill -9: commit, crash, restart on the same data directory, and
/// the group resumes exactly at the committed offsets.
#[test]
fn commits_survive_kill9() {
    let python = require_pip_confluent();
    let _serial = serial();
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
