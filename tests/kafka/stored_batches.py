"""What a topic's settings make of produced batches, as real clients see it.

confluent-kafka (PyPI, a current librdkafka) and kafka-python 3:
  - compression.type=zstd: batches sent uncompressed and in gzip are stored in zstd (the broker
    recompresses); both clients read every record back, keys, values and headers intact; lz4
    and snappy as the broker writes them, read by confluent-kafka (the codec a topic stores is
    checked on the wire by tests/kafka_protocol.rs);
  - message.timestamp.type=LogAppendTime, set by IncrementalAlterConfigs on a live topic: a
    record sent with a day-old timestamp comes back stamped with the broker's clock, typed
    LogAppendTime, in both clients;
  - KIP-937's limits: a record two hours ahead of the broker's clock is refused under the
    default message.timestamp.after.max.ms (an hour, Kafka 4.0's), and a day-old one where
    message.timestamp.before.max.ms is a minute, both with INVALID_TIMESTAMP.
"""
import time

from common import (bootstrap_from_env, confluent_conf, create_topic_confluent, fail, finish,
                    ok, remaining, start_budget, topic_name)

DAY_MS = 86_400_000


def now_ms():
    return int(time.time() * 1000)


def produce(conf, topic, records, compression="none"):
    """records: [(key, value, headers, timestamp or 0)]; answers each delivery's error (None: ok)."""
    from confluent_kafka import Producer
    producer = Producer(dict(conf, **{"linger.ms": 5, "compression.type": compression}))
    errors = []
    for key, value, headers, timestamp in records:
        producer.produce(topic, key=key, value=value, headers=headers, partition=0,
                         timestamp=timestamp, on_delivery=lambda err, _m: errors.append(err))
        producer.poll(0)
    producer.flush(remaining(20))
    if len(errors) != len(records):
        fail(f"{topic}: {len(errors)} deliveries of {len(records)}")
    return errors


def read_confluent(conf, topic, count):
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer(dict(conf, **{"group.id": f"reader-{topic}", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    out = []
    try:
        while len(out) < count and remaining(30) > 0:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                fail(f"{topic}: confluent consumer: {msg.error()}")
            out.append(msg)
    finally:
        consumer.close()
    if len(out) != count:
        fail(f"{topic}: confluent read {len(out)} of {count} records")
    return out


def read_kafka_python(bootstrap, topic, count):
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek(TopicPartition(topic, 0), 0)
    out = []
    try:
        while len(out) < count and remaining(30) > 0:
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(records)
    finally:
        consumer.close()
    if len(out) != count:
        fail(f"{topic}: kafka-python read {len(out)} of {count} records")
    return out


def main():
    start_budget(120)
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    bootstrap = bootstrap_from_env()
    conf = confluent_conf(bootstrap)

    # 1. zstd storage, whatever the producers sent.
    # One topic name from the harness, one topic per setting under it.
    base = topic_name("stored")
    zstd = f"{base}-zstd"
    admin = create_topic_confluent(conf, zstd, 1, config={"compression.type": "zstd"})
    sent = [(f"k{i}".encode(), f"value {i} ".encode() * 20, [("h", f"{i}".encode())], 0)
            for i in range(100)]
    for half, codec in ((sent[:50], "none"), (sent[50:], "gzip")):
        errors = [e for e in produce(conf, zstd, half, codec) if e is not None]
        if errors:
            fail(f"{zstd}: produce ({codec}): {errors[:3]}")
    for msg, (key, value, headers, _) in zip(read_confluent(conf, zstd, 100), sent):
        if (msg.key(), msg.value(), msg.headers()) != (key, value, headers):
            fail(f"{zstd}@{msg.offset()}: confluent read {msg.key()!r} {msg.headers()}")
    for rec, (key, value, headers, _) in zip(read_kafka_python(bootstrap, zstd, 100), sent):
        if (rec.key, rec.value, [(k, v) for k, v in rec.headers]) != (key, value, headers):
            fail(f"{zstd}@{rec.offset}: kafka-python read {rec.key!r} {rec.headers}")
    ok("compression.type=zstd: uncompressed and gzip batches stored in zstd, read back by "
       "confluent-kafka and kafka-python, keys, values and headers intact")

    # The broker's LZ4 frames and xerial-framed snappy, as librdkafka reads them (the codecs
    # kafka-python would need are not installed here).
    for codec in ("lz4", "snappy"):
        topic = f"{base}-{codec}"
        create_topic_confluent(conf, topic, 1, config={"compression.type": codec})
        errors = [e for e in produce(conf, topic, sent[:30]) if e is not None]
        if errors:
            fail(f"{topic}: produce: {errors[:3]}")
        for msg, (key, value, _, _) in zip(read_confluent(conf, topic, 30), sent):
            if (msg.key(), msg.value()) != (key, value):
                fail(f"{topic}@{msg.offset()}: confluent read {msg.key()!r}")
    ok("compression.type=lz4 and snappy: what the broker compressed, librdkafka reads back")

    # 2. LogAppendTime, switched on while the topic lives.
    stamped = f"{base}-stamped"
    create_topic_confluent(conf, stamped, 1)
    resource = ConfigResource("topic", stamped, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=remaining(15))
    before = now_ms()
    produce(conf, stamped, [(b"k", b"old clock", None, before - DAY_MS)])
    after = now_ms()
    (kind, stamp), = [m.timestamp() for m in read_confluent(conf, stamped, 1)]
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME
    if kind != TIMESTAMP_LOG_APPEND_TIME or not before <= stamp <= after:
        fail(f"{stamped}: confluent read timestamp ({kind}, {stamp}), expected LogAppendTime "
             f"within [{before}, {after}]")
    rec, = read_kafka_python(bootstrap, stamped, 1)
    if rec.timestamp_type != 1 or rec.timestamp != stamp:
        fail(f"{stamped}: kafka-python read ({rec.timestamp_type}, {rec.timestamp}), expected "
             f"(1, {stamp})")
    ok(f"LogAppendTime: a day-old record stamped {stamp} by the broker, as both clients read it")

    # 3. Timestamps out of range are refused.
    plain = f"{base}-plain"
    create_topic_confluent(conf, plain, 1)
    ahead, = produce(conf, plain, [(None, b"ahead", None, now_ms() + 2 * 3_600_000)])
    if ahead is None or ahead.code() != KafkaError.INVALID_TIMESTAMP:
        fail(f"{plain}: a record two hours ahead: {ahead}, expected INVALID_TIMESTAMP")
    recent = f"{base}-recent"
    create_topic_confluent(conf, recent, 1, config={"message.timestamp.before.max.ms": "60000"})
    # Apart: a batch with one record out of range is refused whole, as Kafka refuses it.
    old, = produce(conf, recent, [(None, b"old", None, now_ms() - DAY_MS)])
    fresh, = produce(conf, recent, [(None, b"fresh", None, 0)])
    if old is None or old.code() != KafkaError.INVALID_TIMESTAMP or fresh is not None:
        fail(f"{recent}: day-old {old}, fresh {fresh}; expected INVALID_TIMESTAMP, then taken")
    ok("a record two hours ahead (the default after-limit) and a day-old one (a minute's "
       "before-limit) refused with INVALID_TIMESTAMP; a fresh one taken")
    finish("stored_batches")


if __name__ == "__main__":
    main()
