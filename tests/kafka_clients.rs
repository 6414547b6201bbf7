//! Real Kafka clients against the real binary's Kafka listener: kcat and confluent-kafka
//! (librdkafka 2.0.2, Debian's), confluent-kafka from PyPI (a current librdkafka), kafka-python
//! 3.x and kafkajs 2.2.4. Each test starts a broker with three partitions per topic and runs one
//! script from tests/kafka/ (which prints what it checks and exits non-zero on any mismatch).
//! `.ci/run` installs the clients with tests/kafka/install-clients.sh; a missing client fails the
//! test rather than skipping it.

mod common;

use common::scripts::{pip_python, require, require_pip_confluent, run_one};

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
    require(
        "Debian's python3-confluent-kafka (for /usr/bin/python3)",
        "/usr/bin/python3",
        &["-c", "import confluent_kafka"],
    );
    run_one("confluent_debian", SETTINGS, "/usr/bin/python3", &["confluent_roundtrip.py"]);
}

#[test]
fn confluent_kafka_pip() {
    let python = require_pip_confluent();
    run_one("confluent_pip", SETTINGS, &python, &["confluent_roundtrip.py"]);
}

#[test]
fn kafka_python() {
    let python = pip_python();
    require(
        "kafka-python 3.x from PyPI (for python3)",
        &python,
        &["-c", "import sys, kafka; sys.exit(int(kafka.__version__.split('.')[0]) < 3)"],
    );
    run_one("kafka_python_roundtrip", SETTINGS, &python, &["kafka_python_roundtrip.py"]);
}

/// Producers (plain and idempotent), admin, and a group consumer reading everything back.
#[test]
fn kafkajs() {
    require("kafkajs 2.2.4 (npm, in tests/kafka/node)", "node", &[
        "-e",
        "process.exit(require('./node/node_modules/kafkajs/package.json').version === '2.2.4' ? 0 : 1)",
    ]);
    run_one("kafkajs_roundtrip", SETTINGS, "node", &["node/kafkajs_roundtrip.js"]);
}
