//! Regressions that real Kafka clients found: acknowledged data or commits lost, and Kafka
//! behaviours clients rely on. Each test drives confluent-kafka from PyPI (a current librdkafka)
//! through one step of tests/kafka/regressions.py against the real binary, and fails on the
//! build before its fix.

mod common;

use common::scripts::{require_pip_confluent, run_script, serial};
use common::Broker;

const BROKER_ARGS: &[&str] = &["--set", "group.initial.rebalance.delay.ms=300"];

/// Starts a fresh broker and runs the steps in order; fails with the script's output and the
/// broker's log on the first step that fails.
fn run_steps(steps: &[&[&str]], between: impl Fn(usize, &mut Broker)) {
    let python = require_pip_confluent();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), BROKER_ARGS);
    for (index, step) in steps.iter().enumerate() {
        between(index, &mut broker);
        let mut args = vec!["regressions.py"];
        args.extend_from_slice(step);
        match run_script(&broker, &format!("regressions-{}", step[0]), &python, &args) {
            Ok(out) => println!("{}: {out}", step[0]),
            Err(why) => panic!("{} {why}\n--- broker stderr\n{}", step[0], broker.stderr()),
        }
    }
}

/// The first OffsetCommit of a fresh broker (which creates `__consumer_offsets`) is fetched
/// back at once, with the leader epoch it was committed with.
#[test]
fn the_first_commit_on_a_fresh_broker_is_visible_at_once() {
    run_steps(&[&["first-commit"]], |_, _| {});
}

/// CreatePartitions keeps the existing partitions' acknowledged records, also after a restart.
#[test]
fn growing_a_topic_keeps_its_records_across_a_restart() {
    run_steps(&[&["grow-before", "grown"], &["grow-after", "grown"]], |index, broker| {
        if index == 1 {
            broker.stop();
            broker.restart();
        }
    });
}

/// Responses stay within fetch.max.bytes: only the first batch of a response may exceed it.
#[test]
fn fetch_responses_stay_within_fetch_max_bytes() {
    run_steps(&[&["fetch-limits"]], |_, _| {});
}

/// A transactional producer is told at once, and fatally, that transactions are not served.
#[test]
fn transactional_producers_fail_at_once_with_the_reason() {
    run_steps(&[&["transactions"]], |_, _| {});
}

/// A group whose members all left is still described as a consumer group.
#[test]
fn an_emptied_group_stays_a_consumer_group() {
    run_steps(&[&["emptied-group"]], |_, _| {});
}
