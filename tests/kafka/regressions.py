"""Regressions found by driving confluent-kafka (PyPI, a current librdkafka) harder, one step per
argument, each against the broker at SPATE_KAFKA (tests/kafka_regressions.rs runs them):

  first-commit      a fresh broker's first OffsetCommit is visible to the next OffsetFetch, with
                    its leader epoch (it vanished about 4 runs in 5: the coordinator's cleanup
                    tick removed the group while the commit created __consumer_offsets)
  grow-before TOPIC / grow-after TOPIC
                    40 acks=all records in 2 partitions, grown to 4 partitions; after the
                    broker restarts, all 40 read back (growing deleted the old partitions)
  fetch-limits      a consumer with fetch.max.bytes=1000000 and the smallest receive buffer
                    librdkafka allows reads batches of 600 KB from 4 partitions (responses over
                    fetch.max.bytes made it fetch again forever)
  transactions      init_transactions fails at once with a fatal error that says why (it
                    waited out its own timeout on a retriable code)
  emptied-group     a consumer group whose member left stays a `consumer` group, Empty
"""
import sys
import time

from common import (bootstrap_from_env, confluent_conf, confluent_versions,
                    create_topic_confluent, fail, finish, ok, remaining, start_budget,
                    topic_name)

BOOTSTRAP = bootstrap_from_env()
CONF = confluent_conf(BOOTSTRAP)


def produce_all(topic, values_by_partition, extra=None):
    """Produces every value to its partition with acks=all; fails unless all are delivered."""
    from confluent_kafka import Producer
    producer = Producer({**CONF, "acks": "all", **(extra or {})})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    for partition, values in values_by_partition.items():
        for value in values:
            producer.produce(topic, value=value, partition=partition, on_delivery=report)
            producer.poll(0)
    left = producer.flush(remaining(30))
    if left or errors:
        fail(f"produce to {topic}: {left} undelivered, errors {errors[:3]}")


def consume_partitions(topic, partitions, count, extra=None):
    """Reads `count` records from the start of `partitions`; returns {partition: [values]}."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    consumer = Consumer({**CONF, "group.id": f"reader-{topic}", "enable.auto.commit": False,
                         **(extra or {})})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    read = {p: [] for p in partitions}
    got = 0
    while got < count:
        msg = consumer.poll(remaining(1))
        if msg is None:
            continue
        if msg.error():
            fail(f"consume {topic}: {msg.error()}")
        read[msg.partition()].append(msg.value())
        got += 1
    consumer.close()
    return read


def first_commit():
    from confluent_kafka import Consumer, TopicPartition
    topic = topic_name("first-commit")
    create_topic_confluent(CONF, topic, 1)
    produce_all(topic, {0: [b"r"] * 10})
    consumer = Consumer({**CONF, "group.id": "first-commit", "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, 0, 7, leader_epoch=0)], asynchronous=False)
    [committed] = consumer.committed([TopicPartition(topic, 0)], timeout=remaining(10))
    consumer.close()
    if committed.offset != 7:
        fail(f"the first commit on a fresh broker was acknowledged, then fetched as "
             f"{committed.offset} (expected 7)")
    if committed.leader_epoch != 0:
        fail(f"committed with leader epoch 0, fetched {committed.leader_epoch}")
    ok("the first commit on a fresh broker is fetched back at once, with its leader epoch")


def grow_before(topic):
    from confluent_kafka.admin import NewPartitions
    admin = create_topic_confluent(CONF, topic, 2)
    produce_all(topic, {p: [f"p{p}-{i}".encode() for i in range(20)] for p in (0, 1)})
    admin.create_partitions([NewPartitions(topic, 4)])[topic].result(timeout=remaining(20))
    read = consume_partitions(topic, [0, 1], 40)
    if any(len(values) != 20 for values in read.values()):
        fail(f"after growing: {({p: len(v) for p, v in read.items()})} records")
    ok("40 acks=all records read back after growing 2 -> 4 partitions")


def grow_after(topic):
    read = consume_partitions(topic, [0, 1], 40)
    for p, values in read.items():
        expected = [f"p{p}-{i}".encode() for i in range(20)]
        if values != expected:
            fail(f"partition {p} after a restart holds {len(values)} records, not the 20 "
                 f"acknowledged before the topic grew")
    ok("all 40 records survive the restart after growing")


def fetch_limits():
    topic = topic_name("fetch-limits")
    create_topic_confluent(CONF, topic, 4)
    # Batches of 12 records of 50 KB (600 KB): two of them are over fetch.max.bytes.
    value = b"x" * 50_000
    produce_all(topic, {p: [value] * 36 for p in range(4)},
                {"linger.ms": 200, "batch.size": 640_000, "message.max.bytes": 2_000_000})
    smallest = {"fetch.max.bytes": 1_000_000, "receive.message.max.bytes": 1_000_512}
    read = consume_partitions(topic, list(range(4)), 4 * 36, smallest)
    if any(len(values) != 36 for values in read.values()):
        fail(f"read {({p: len(v) for p, v in read.items()})}")
    ok("every record read with fetch.max.bytes=1000000 and receive.message.max.bytes=1000512")


def transactions():
    from confluent_kafka import KafkaError, KafkaException, Producer
    producer = Producer({**CONF, "transactional.id": "regressions-tx"})
    started = time.monotonic()
    try:
        producer.init_transactions(remaining(20))
    except KafkaException as e:
        error = e.args[0]
        took = time.monotonic() - started
        if error.code() == KafkaError._TIMED_OUT:
            fail(f"init_transactions waited out its timeout ({took:.1f} s): {error}")
        if not error.fatal() or "not supported" not in error.str():
            fail(f"init_transactions failed, but not fatally with a reason: {error}")
        ok(f"init_transactions fails fatally after {took:.1f} s: {error.str()}")
        return
    fail("init_transactions succeeded on a broker without transactions")


def emptied_group():
    from confluent_kafka import ConsumerGroupState, Consumer
    from confluent_kafka.admin import AdminClient
    topic = topic_name("emptied-group")
    create_topic_confluent(CONF, topic, 1)
    produce_all(topic, {0: [b"r"]})
    group = f"emptied-{topic}"
    consumer = Consumer({**CONF, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    while True:
        msg = consumer.poll(remaining(1))
        if msg is not None and not msg.error():
            break
    consumer.close()
    admin = AdminClient(dict(CONF))
    described = admin.describe_consumer_groups([group])[group].result(timeout=remaining(10))
    if described.state != ConsumerGroupState.EMPTY:
        fail(f"after its only member left, {group} is {described.state}")
    if described.is_simple_consumer_group:
        fail(f"{group} lost its protocol type when its member left: described as simple")
    ok("a group whose member left is still a consumer group, Empty")


def main():
    start_budget(60)
    print(confluent_versions(), flush=True)
    step, args = sys.argv[1], sys.argv[2:]
    steps = {"first-commit": first_commit, "grow-before": grow_before,
             "grow-after": grow_after, "fetch-limits": fetch_limits,
             "transactions": transactions, "emptied-group": emptied_group}
    if step not in steps:
        fail(f"unknown step {step}; one of {sorted(steps)}")
    steps[step](*args)
    finish(f"regressions {step}")


if __name__ == "__main__":
    main()
