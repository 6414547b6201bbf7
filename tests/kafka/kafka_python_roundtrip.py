#!/usr/bin/env python3
"""Round trip through Spate's Kafka listener with kafka-python 3.x (pip, pure Python).

Checks: KafkaAdminClient create_topics (3 partitions); a KafkaProducer with its defaults
(idempotent, acks=all) sending keyed records with headers and explicit timestamps, every future's
.get() succeeding with dense offsets over every partition; a KafkaConsumer without a group
(assign() + seek_to_beginning()) reading every record back byte for byte; beginning/end offsets
and offsets_for_times; delete_topics.

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
"""
import os
import sys
import time

import kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    bootstrap_from_env, create_topic_kafka_python, fail, fail_later, finish, ok, remaining,
    start_budget, topic_name)

DEADLINE = start_budget(55)
PARTITIONS = 3
N = 600


def remaining_ms(cap_s):
    return int(remaining(cap_s) * 1000)


bootstrap = bootstrap_from_env()
topic = topic_name("kafka-python")
print(f"kafka-python {kafka.__version__}, python {sys.executable}, bootstrap {bootstrap}, "
      f"topic {topic}", flush=True)
common = {"bootstrap_servers": bootstrap, "request_timeout_ms": 15000}

# --- Admin -----------------------------------------------------------------------------------
admin, result = create_topic_kafka_python(common, "spate-kafka-python-admin", topic, PARTITIONS)
ok(f"create_topics {topic} with {PARTITIONS} partitions: {result}")
described = [t for t in admin.describe_topics([topic]) if t["name"] == topic]
if not described or len(described[0]["partitions"]) != PARTITIONS:
    fail(f"describe_topics does not show {PARTITIONS} partitions for {topic}: {described}")
ok(f"describe_topics shows {PARTITIONS} partitions")

# --- Produce ---------------------------------------------------------------------------------
BASE_TS = int(time.time() * 1000) - 600_000
producer = KafkaProducer(client_id="spate-kafka-python-producer", linger_ms=5,
                         max_block_ms=10000, **common)
ok(f"producer config: enable_idempotence={producer.config['enable_idempotence']}, "
   f"acks={producer.config['acks']}")
if not producer.config["enable_idempotence"] or producer.config["acks"] != -1:
    fail("expected kafka-python's defaults to be idempotent with acks=all")

sent = []
for i in range(N):
    key = f"kp-key-{i}".encode()
    value = f"kp-value-{i}-".encode() + b"v" * (i % 300)
    headers = [("seq", str(i).encode()), ("origin", b"kafka-python")]
    if i % 37 == 5:
        key = b"\x00\xff\n\r" + key
        value = bytes(range(256)) * 3
        headers.append(("bin", b"\x00\x01\xfe\xff"))
    if i % 37 == 6:
        value = None
    if i % 37 == 7:
        headers = []
    if i % 37 == 8:
        value = b""
        headers += [("dup", b"1"), ("dup", b"2")]
    fut = producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=BASE_TS + i)
    sent.append({"key": key, "value": value, "headers": headers, "ts": BASE_TS + i, "fut": fut})
producer.flush(timeout=remaining(20))
expected = {}
for i, r in enumerate(sent):
    try:
        md = r.pop("fut").get(timeout=remaining(10))
    except Exception as e:  # noqa: BLE001
        fail(f"record {i}: send failed: {e!r}")
    where = (md.partition, md.offset)
    if where in expected:
        fail(f"two records acknowledged at partition {md.partition} offset {md.offset}")
    expected[where] = r
producer.close(timeout=5)
counts = {p: sum(1 for (pp, _) in expected if pp == p) for p in range(PARTITIONS)}
ok(f"{N} sends acknowledged (future.get()), per partition {counts}")
if min(counts.values()) == 0:
    fail(f"keys did not spread records over every partition: {counts}")
for p in range(PARTITIONS):
    offsets = sorted(o for (pp, o) in expected if pp == p)
    if offsets != list(range(len(offsets))):
        fail(f"partition {p}: acknowledged offsets are not 0..{len(offsets) - 1}")
ok("acknowledged offsets are dense from 0 in every partition")

# --- Consume without a group -----------------------------------------------------------------
consumer = KafkaConsumer(client_id="spate-kafka-python-consumer", group_id=None,
                         enable_auto_commit=False, auto_offset_reset="none", **common)
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
consumer.assign(tps)
consumer.seek_to_beginning()
got = 0
next_offset = {p: 0 for p in range(PARTITIONS)}
polls = 0
while got < N and polls < 2000 and DEADLINE - time.monotonic() > 2:
    polls += 1
    batch = consumer.poll(timeout_ms=200)
    for tp, records in batch.items():
        for rec in records:
            where = (rec.partition, rec.offset)
            if rec.offset != next_offset[rec.partition]:
                fail(f"partition {rec.partition}: got offset {rec.offset}, expected "
                     f"{next_offset[rec.partition]}")
            next_offset[rec.partition] = rec.offset + 1
            want = expected.get(where)
            if want is None:
                fail(f"unexpected record at {where}: key {rec.key!r}")
            if rec.key != want["key"]:
                fail(f"{where}: key {rec.key!r} != sent {want['key']!r}")
            if rec.value != want["value"]:
                fail(f"{where}: value {rec.value!r:.120} != sent {want['value']!r:.120}")
            headers = [(k, v) for k, v in rec.headers]
            if headers != want["headers"]:
                fail(f"{where}: headers {headers!r} != sent {want['headers']!r}")
            if rec.timestamp != want["ts"] or rec.timestamp_type != 0:
                fail(f"{where}: timestamp {rec.timestamp} (type {rec.timestamp_type}) != sent "
                     f"{want['ts']} (CreateTime)")
            got += 1
if got != N:
    fail(f"consumed {got} of {N} records in {polls} polls (positions {next_offset})")
ok(f"consumer without a group (assign + seek_to_beginning) read all {N} records back byte for "
   f"byte: keys, values, headers, timestamps, offsets")

begin = consumer.beginning_offsets(tps, timeout_ms=remaining_ms(10))
end = consumer.end_offsets(tps, timeout_ms=remaining_ms(10))
for tp in tps:
    if begin[tp] != 0 or end[tp] != counts[tp.partition]:
        fail(f"{tp}: beginning/end offsets {begin[tp]}/{end[tp]}, expected 0/{counts[tp.partition]}")
ok(f"beginning_offsets all 0, end_offsets {[end[tp] for tp in tps]} sum to {sum(end.values())}")

# offsets_for_times: the first record at or after the middle timestamp, per partition.
mid = BASE_TS + N // 2
found = consumer.offsets_for_times({tp: mid for tp in tps}, timeout_ms=remaining_ms(10))
for tp in tps:
    want = min(((o, r["ts"]) for (p, o), r in expected.items()
                if p == tp.partition and r["ts"] >= mid), default=None)
    have = found.get(tp)
    have = None if have is None else (have.offset, have.timestamp)
    if have != want:
        fail_later(f"{tp}: offsets_for_times({mid}) = {have}, expected (offset, timestamp) "
                   f"{want} (the first record at/after the timestamp, not its batch)")
        break
else:
    ok("offsets_for_times finds the first record at/after a timestamp in every partition")
consumer.close()

# --- Delete ----------------------------------------------------------------------------------
try:
    admin.delete_topics([topic], timeout_ms=10000)
except Exception as e:  # noqa: BLE001
    fail(f"delete_topics({topic}) failed: {e!r}")
stop = time.monotonic() + 5
while topic in admin.list_topics():
    if time.monotonic() > stop:
        fail(f"{topic} still listed 5 s after delete_topics")
    time.sleep(0.2)
ok(f"delete_topics removed {topic}")
admin.close()
finish("kafka_python_roundtrip")
