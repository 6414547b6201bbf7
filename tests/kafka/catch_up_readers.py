"""Kafka consumers behind the tail read what the log holds, through the shard's read cache.

confluent-kafka (PyPI, a current librdkafka) against a broker whose caches are small (see
tests/catch_up.rs): about 6 MB of 1000-byte records is produced to each of 2 partitions in
1 MiB segments, then three consumers per partition read it all from offset 0 at once, with
max.partition.fetch.bytes of 64 KiB, 256 KiB and 1 MiB. Every record must arrive once, in
offset order, with the value produced at that offset; the caller checks from the broker's own
report that its reads came through the read cache and its reads ahead, within the budget.
"""
import time

from common import (bootstrap_from_env, confluent_conf, create_topic_confluent, fail, finish,
                    ok, remaining, start_budget, topic_name)

PARTITIONS = 2
RECORDS = 6000
VALUE_BYTES = 1000
FETCH_SIZES = [64 * 1024, 256 * 1024, 1024 * 1024]


def value_of(partition, seq):
    head = f"p{partition}-{seq}-".encode()
    return head + b"x" * (VALUE_BYTES - len(head))


def produce_all(conf, topic):
    from confluent_kafka import Producer
    # Batches of 16 KiB, as many entries per segment: the readers' fetch sizes matter.
    producer = Producer(dict(conf, **{"linger.ms": 5, "batch.size": 16384, "acks": "all",
                                      "enable.idempotence": True}))
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    # 12,000 records: within the producer's queue (100,000 by default).
    for seq in range(RECORDS):
        for partition in range(PARTITIONS):
            producer.produce(topic, value=value_of(partition, seq), partition=partition,
                             on_delivery=report)
        producer.poll(0)
    left = producer.flush(remaining(40))
    if left or failed:
        fail(f"{left} records undelivered, {len(failed)} failed: {failed[:3]}")
    ok(f"{RECORDS} records of {VALUE_BYTES} bytes produced to each of {PARTITIONS} partitions")


def read_all(conf, topic):
    from confluent_kafka import Consumer, TopicPartition
    readers = []
    for partition in range(PARTITIONS):
        for fetch in FETCH_SIZES:
            consumer = Consumer(dict(conf, **{
                "group.id": f"behind-{partition}-{fetch}",
                "enable.auto.commit": False,
                "max.partition.fetch.bytes": fetch,
            }))
            consumer.assign([TopicPartition(topic, partition, 0)])
            readers.append({"consumer": consumer, "partition": partition, "fetch": fetch,
                            "next": 0})
    deadline = time.monotonic() + remaining(50)
    try:
        # One thread polls them all in turn: every reader's fetches are in flight together.
        while any(r["next"] < RECORDS for r in readers) and time.monotonic() < deadline:
            for reader in (r for r in readers if r["next"] < RECORDS):
                for msg in reader["consumer"].consume(num_messages=500, timeout=0.05):
                    check(reader, msg)
    finally:
        for reader in readers:
            reader["consumer"].close()
    for reader in readers:
        if reader["next"] != RECORDS:
            fail(f"partition {reader['partition']} with {reader['fetch']}-byte fetches read "
                 f"{reader['next']} of {RECORDS} records")
    ok(f"{len(readers)} readers each read their partition's {RECORDS} records in order, "
       "each the one produced at its offset")


def check(reader, msg):
    partition, fetch = reader["partition"], reader["fetch"]
    if msg.error():
        fail(f"partition {partition}, {fetch}-byte fetches: {msg.error()}")
    if msg.offset() != reader["next"]:
        fail(f"partition {partition}, {fetch}-byte fetches: offset {msg.offset()} where "
             f"{reader['next']} was next")
    if msg.value() != value_of(partition, msg.offset()):
        fail(f"partition {partition}: the record at offset {msg.offset()} is not the one "
             f"produced there: {msg.value()[:24]!r}")
    reader["next"] += 1


def main():
    start_budget(80)
    conf = confluent_conf(bootstrap_from_env())
    topic = topic_name("behind")
    create_topic_confluent(conf, topic, PARTITIONS, {"segment.bytes": "1048576"})
    produce_all(conf, topic)
    read_all(conf, topic)
    finish("catch_up_readers")


if __name__ == "__main__":
    main()
