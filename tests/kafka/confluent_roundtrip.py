#!/usr/bin/env python3
"""Round trip through Spate's Kafka listener with confluent-kafka (librdkafka).

Runs under Debian's /usr/bin/python3 (confluent-kafka 1.7, librdkafka 2.0.2) and under pip's
confluent-kafka (bundled librdkafka 2.x). Checks: AdminClient create_topics (3 partitions, a
topic config) and describe_configs; an idempotent acks=all producer with lz4, then one with zstd,
keyed records spread over every partition, every delivery report successful, compression really
applied; a consumer with a group.id but manual assign() from OFFSET_BEGINNING (no commits) that
reads every record back byte for byte (key, value, headers, timestamp, offset); delete_topics.

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
"""
import json
import os
import sys
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    bootstrap_from_env, client_errors, confluent_conf, confluent_versions, create_topic_confluent,
    fail, fail_later, finish, ok, remaining, start_budget, topic_name)

DEADLINE = start_budget(55)
PARTITIONS = 3
PER_PRODUCER = 400
RETENTION_MS = "3600000"

bootstrap = bootstrap_from_env()
topic = topic_name("confluent")
print(f"{confluent_versions()}, python {sys.executable}, bootstrap {bootstrap}, topic {topic}",
      flush=True)
common = confluent_conf(bootstrap)

# --- Admin: create the topic, describe its configs -------------------------------------------
admin = create_topic_confluent(common, topic, PARTITIONS, config={"retention.ms": RETENTION_MS})
ok(f"create_topics {topic} with {PARTITIONS} partitions")

metadata = admin.list_topics(timeout=remaining(10))
if topic not in metadata.topics:
    fail(f"list_topics does not show {topic}: {sorted(metadata.topics)}")
tmeta = metadata.topics[topic]
if tmeta.error is not None:
    fail(f"metadata error for {topic}: {tmeta.error}")
if sorted(tmeta.partitions) != list(range(PARTITIONS)):
    fail(f"metadata shows partitions {sorted(tmeta.partitions)}, want 0..{PARTITIONS - 1}")
for p in tmeta.partitions.values():
    if p.leader < 0 or p.error is not None:
        fail(f"partition {p.id} has leader {p.leader}, error {p.error}")
ok(f"metadata: {len(metadata.brokers)} broker(s), {topic} has {PARTITIONS} partitions with leaders")

resource = ConfigResource("topic", topic)
try:
    configs = admin.describe_configs([resource], request_timeout=15)[resource].result(
        timeout=remaining(20))
except Exception as e:  # noqa: BLE001
    fail(f"describe_configs({topic}) failed: {e!r}")
if "retention.ms" not in configs:
    fail(f"describe_configs has no retention.ms; got {sorted(configs)}")
if configs["retention.ms"].value != RETENTION_MS:
    fail(f"retention.ms is {configs['retention.ms'].value!r}, created with {RETENTION_MS}")
ok(f"describe_configs: {len(configs)} entries, retention.ms={configs['retention.ms'].value}")

# --- Produce ---------------------------------------------------------------------------------
BASE_TS = int(time.time() * 1000) - 60_000
FILLER = b"spate-compressible-" * 20  # makes compression visible in the bytes sent


def make_records(tag, count):
    out = []
    for i in range(count):
        n = len(out)
        key = f"{tag}-key-{i}".encode()
        value = f"{tag}-value-{i}|".encode() + FILLER
        headers = [("seq", str(i).encode()), ("tag", tag.encode())]
        if i % 50 == 1:
            key = bytes([0, 255, 10, 13]) + key  # odd bytes in keys
            value = bytes(range(256)) + value
            headers.append(("bin", bytes([0, 1, 2, 255, 254])))
            headers.append(("utf8-ü", "ümlaut ✓".encode()))
        if i % 50 == 2:
            value = b""  # empty, not null
            headers.append(("dup", b"first"))
            headers.append(("dup", b"second"))  # repeated header names keep order
        if i % 50 == 3:
            value = None  # null value (a tombstone)
        if i % 50 == 4:
            headers = []
        out.append({"key": key, "value": value, "headers": headers, "ts": BASE_TS + n})
    return out


def produce_all(codec, records):
    reports = {}
    stats = []

    def stats_cb(s):
        stats.append(json.loads(s))

    conf = dict(common)
    conf.update({
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": codec,
        "linger.ms": 20,
        "message.timeout.ms": 20000,
        "statistics.interval.ms": 100,
        "stats_cb": stats_cb,
    })
    try:
        producer = Producer(conf)
    except Exception as e:  # noqa: BLE001
        fail(f"creating a {codec} producer failed: {e!r}")

    def report(index):
        def cb(err, msg):
            reports[index] = (err, msg.partition(), msg.offset())
        return cb

    for i, r in enumerate(records):
        for _ in range(100):
            try:
                producer.produce(topic, value=r["value"], key=r["key"], headers=r["headers"],
                                 timestamp=r["ts"], on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.05)
        else:
            fail(f"{codec} producer queue stayed full")
        producer.poll(0)
    left = producer.flush(remaining(25))
    if left:
        fail(f"{codec} producer: {left} records still undelivered after flush "
             f"(delivered {len(reports)}); client errors: {client_errors}")
    # One more statistics round after everything was acknowledged.
    seen = len(stats)
    end = time.monotonic() + 3
    while len(stats) < seen + 2 and time.monotonic() < end:
        producer.poll(0.1)
    if len(reports) != len(records):
        fail(f"{codec}: {len(reports)} delivery reports for {len(records)} records")
    bad = [(i, str(err)) for i, (err, _, _) in reports.items() if err is not None]
    if bad:
        fail(f"{codec}: {len(bad)} failed deliveries, e.g. {bad[:5]}")
    for i, (_, partition, offset) in reports.items():
        records[i]["partition"] = partition
        records[i]["offset"] = offset
    per_partition = {}
    for r in records:
        per_partition[r["partition"]] = per_partition.get(r["partition"], 0) + 1
    ok(f"{codec}: {len(records)} deliveries succeeded (acks=all, idempotent), "
       f"per partition {dict(sorted(per_partition.items()))}")
    if stats:
        payload = sum(len(r["value"] or b"") + len(r["key"]) for r in records)
        sent = sum(b.get("txbytes", 0) for b in stats[-1].get("brokers", {}).values())
        if sent == 0:
            print(f"note: {codec}: statistics show no bytes sent; compression not checked")
        elif sent * 2 > payload:
            fail_later(f"{codec}: sent {sent} bytes for {payload} bytes of keys and values: the "
                       f"producer did not compress (librdkafka enables lz4 only if the broker "
                       f"advertises FindCoordinator v0, zstd only with Produce v7 and Fetch v10; "
                       f"before 2.11 compression also needs Produce v0)")
        else:
            ok(f"{codec}: compressed on the wire ({sent} bytes sent for {payload} payload bytes)")
    return records


records = produce_all("lz4", make_records("lz4", PER_PRODUCER))
records += produce_all("zstd", make_records("zstd", PER_PRODUCER))
used = {r["partition"] for r in records}
if used != set(range(PARTITIONS)):
    fail(f"keyed records landed only on partitions {sorted(used)}")
ok(f"keys spread records over partitions {sorted(used)}")

expected = {}
for r in records:
    where = (r["partition"], r["offset"])
    if where in expected:
        fail(f"two records were acknowledged at partition {where[0]} offset {where[1]}")
    expected[where] = r
for p in range(PARTITIONS):
    offsets = sorted(o for (pp, o) in expected if pp == p)
    if offsets != list(range(len(offsets))):
        fail(f"partition {p}: acknowledged offsets are not 0..{len(offsets) - 1}: "
             f"{offsets[:10]}...")
ok("acknowledged offsets are dense from 0 in every partition")

# --- Consume with assign() -------------------------------------------------------------------
consumer = Consumer(dict(common, **{
    "group.id": f"{topic}-reader",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "enable.partition.eof": True,
}))
consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                 for p in range(PARTITIONS)])
got = {}
eof = set()
next_offset = {p: 0 for p in range(PARTITIONS)}
polls = 0
while (len(got) < len(expected) or len(eof) < PARTITIONS) and polls < 5000:
    polls += 1
    if DEADLINE - time.monotonic() < 2:
        break
    msg = consumer.poll(0.2)
    if msg is None:
        continue
    if msg.error():
        if msg.error().code() == KafkaError._PARTITION_EOF:
            if next_offset[msg.partition()] == sum(1 for (p, _) in expected
                                                   if p == msg.partition()):
                eof.add(msg.partition())
            continue
        fail(f"consumer error: {msg.error()} (client errors: {client_errors})")
    eof.discard(msg.partition())
    where = (msg.partition(), msg.offset())
    if msg.offset() != next_offset[msg.partition()]:
        fail(f"partition {msg.partition()}: got offset {msg.offset()}, "
             f"expected {next_offset[msg.partition()]}")
    next_offset[msg.partition()] = msg.offset() + 1
    want = expected.get(where)
    if want is None:
        fail(f"unexpected record at partition {where[0]} offset {where[1]}: key {msg.key()!r}")
    if msg.key() != want["key"]:
        fail(f"{where}: key {msg.key()!r} != sent {want['key']!r}")
    if msg.value() != want["value"]:
        fail(f"{where}: value {msg.value()!r:.120} != sent {want['value']!r:.120}")
    headers = [(k, v) for k, v in (msg.headers() or [])]
    if headers != want["headers"]:
        fail(f"{where}: headers {headers!r} != sent {want['headers']!r}")
    ts_type, ts = msg.timestamp()
    if ts_type != confluent_kafka.TIMESTAMP_CREATE_TIME or ts != want["ts"]:
        fail(f"{where}: timestamp ({ts_type}, {ts}) != sent (CreateTime, {want['ts']})")
    got[where] = True
if len(got) != len(expected):
    missing = sorted(set(expected) - set(got))
    fail(f"consumed {len(got)} of {len(expected)} records in {polls} polls; "
         f"first missing {missing[:5]}; client errors: {client_errors}")
ok(f"consumer (group.id set, assign(), no commits) read all {len(got)} records back byte for "
   f"byte: keys, values, headers, timestamps and offsets")

# Positions and watermarks agree with what was produced.
for p in range(PARTITIONS):
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=remaining(10))
    want_high = next_offset[p]
    if (low, high) != (0, want_high):
        fail(f"partition {p}: watermarks ({low}, {high}), expected (0, {want_high})")
ok("get_watermark_offsets matches every partition")

# offsets_for_times: the first record at or after a timestamp in the middle of a batch.
mid = BASE_TS + PER_PRODUCER // 2 + 1
found = consumer.offsets_for_times([TopicPartition(topic, p, mid) for p in range(PARTITIONS)],
                                   timeout=remaining(10))
for tp in found:
    want = min((o for (p, o), r in expected.items() if p == tp.partition and r["ts"] >= mid),
               default=-1)
    if tp.error is not None or tp.offset != want:
        fail_later(f"offsets_for_times(partition {tp.partition}, {mid}) = {tp.offset} "
                   f"(error {tp.error}), expected {want}: the first record at/after the "
                   f"timestamp, not the start of its batch")
        break
else:
    ok("offsets_for_times finds the first record at/after a timestamp in every partition")

consumer.close()
ok("consumer closed")

# --- Delete the topic ------------------------------------------------------------------------
try:
    admin.delete_topics([topic], operation_timeout=10, request_timeout=15)[topic].result(
        timeout=remaining(20))
except Exception as e:  # noqa: BLE001
    fail(f"delete_topics({topic}) failed: {e!r}")
end = time.monotonic() + 5
while topic in admin.list_topics(timeout=remaining(10)).topics:
    if time.monotonic() > end:
        fail(f"{topic} still listed 5 s after delete_topics")
    time.sleep(0.2)
ok(f"delete_topics removed {topic}")
if client_errors:
    print(f"note: client reported {len(client_errors)} error(s): {client_errors[:5]}")
finish("confluent_roundtrip")
