//! Real Kafka clients against the real binary's Kafka listener: kcat and confluent-kafka
//! (librdkafka 2.0.2, Debian's), confluent-kafka from PyPI (a current librdkafka), kafka-python
//! 3.x and kafkajs 2.2.4. Each test starts a broker with three partitions per topic and runs one
//! script from tests/kafka/ (which prints what it checks and exits non-zero on any mismatch).
//! `.ci/run` installs the clients with tests/kafka/install-clients.sh; a missing client fails the
//! test rather than skipping it.

mod common;

use common::scripts::{
    pip_python, require, require_debian_confluent, require_kafka_python, require_kafkajs,
    require_pip_confluent, run_one,
};

/// Three partitions per topic; a short first-rebalance delay keeps group consumers quick.
const SETTINGS: &[&str] =
    &["--set", "num.partitions=3", "--set", "group.initial.rebalance.delay.ms=300"];

#[test]
fn kcat() {
    require("kcat", "kcat", &["-V"]);
    run_one("kcat_roundtrip", SETTINGS, "bash", &["kcat_roundtrip.sh"]);
}

#[test]
fn confluent_kafka_debian() {
    let python = require_debian_confluent();
    run_one("confluent_debian", SETTINGS, python, &["confluent_roundtrip.py"]);
}

#[test]
fn confluent_kafka_pip() {
    let python = require_pip_confluent();
    run_one("confluent_pip", SETTINGS, &python, &["confluent_roundtrip.py"]);
}

#[test]
fn kafka_python() {
    let python = require_kafka_python();
    run_one("kafka_python_roundtrip", SETTINGS, &python, &["kafka_python_roundtrip.py"]);
}

/// Topic settings created, changed (incrementally and whole) and described through
/// confluent-kafka's and kafka-python's admin clients, with their effect on the log checked.
/// The broker's own `log.retention.ms` shows as its static setting; retention checks run often
/// enough to act within the script's budget.
#[test]
fn admin_configs() {
    let python = require_pip_confluent();
    require_kafka_python();
    let settings =
        ["--set", "log.retention.ms=3600000", "--set", "log.retention.check.interval.ms=200"];
    run_one("admin_configs", &settings, &python, &["admin_configs.py"]);
}

/// What topic settings make of stored batches, through confluent-kafka and kafka-python:
/// `compression.type=zstd` recompresses (both read everything back), `LogAppendTime` stamps
/// the broker's clock, and timestamps out of KIP-937's limits are refused.
#[test]
fn stored_batches() {
    let python = require_pip_confluent();
    require_kafka_python();
    run_one("stored_batches", &[], &python, &["stored_batches.py"]);
}

/// ListOffsets by max timestamp (confluent-kafka), DescribeLogDirs, DescribeProducers and
/// OffsetDelete (kafka-python), each with its answer checked against what was written.
#[test]
fn admin_apis() {
    let python = require_pip_confluent();
    require_kafka_python();
    run_one(
        "admin_apis",
        &["--set", "group.initial.rebalance.delay.ms=0"],
        &python,
        &["admin_apis.py"],
    );
}

/// aiokafka (asyncio, its own protocol code): admin, an idempotent producer, a consumer group
/// that commits, and a new member starting from the committed offsets.
#[test]
fn aiokafka() {
    let python = pip_python();
    require("aiokafka from PyPI", &python, &["-c", "import aiokafka"]);
    run_one("aiokafka_roundtrip", SETTINGS, &python, &["aiokafka_roundtrip.py"]);
}

/// Producers (plain and idempotent), admin, and a group consumer reading everything back.
#[test]
fn kafkajs() {
    require_kafkajs();
    run_one("kafkajs_roundtrip", SETTINGS, "node", &["node/kafkajs_roundtrip.js"]);
}
