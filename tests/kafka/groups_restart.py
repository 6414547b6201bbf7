#!/usr/bin/env python3
"""Committed offsets survive a broker crash (pip's confluent-kafka 2.x).

Two phases, run against the same broker data directory with a kill -9 and a restart between
them (tests/kafka_groups.rs does that):

  groups_restart.py commit   creates a 3-partition topic with 50 sequenced records per
                             partition; group G (subscribe) reads them and commits twice, the
                             second time partition p at 10 + 7p with metadata "g-p<p>"; group S
                             commits partition p at 3 + 2p without joining (assign(), generation
                             -1, the way standalone consumers and tools commit); checks
                             committed() right away; G's member closes (LeaveGroup).
  groups_restart.py resume   after the crash: committed() for G and S returns exactly those
                             offsets and metadata; a member of G subscribes again and its first
                             record in every partition is at the committed offset (not 0, not
                             the end), reading each partition to its end.

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (topic name; the same for both phases; a
second command-line argument works too).
"""
import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    bootstrap_from_env, client_errors, confluent_conf, confluent_versions, create_topic_confluent,
    fail, ok, produce_sequenced, remaining, start_budget)

start_budget(55)
PARTITIONS = 3
N = 50

phase = sys.argv[1] if len(sys.argv) > 1 else ""
if phase not in ("commit", "resume"):
    fail("usage: groups_restart.py commit|resume [topic]")
bootstrap = bootstrap_from_env()
topic = (sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SPATE_TOPIC")) or \
    fail("set SPATE_TOPIC (the same topic for both phases)")
group_g, group_s = f"{topic}-restart-g", f"{topic}-restart-s"
print(f"phase {phase}: {confluent_versions()}, bootstrap {bootstrap}, topic {topic}, groups "
      f"{group_g} {group_s}", flush=True)

common = confluent_conf(bootstrap)
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
WANT_G = [10 + 7 * p for p in range(PARTITIONS)]
WANT_S = [3 + 2 * p for p in range(PARTITIONS)]


def consumer(group, **extra):
    conf = dict(common, **{"group.id": group, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                           "heartbeat.interval.ms": 500, "enable.partition.eof": True})
    conf.update(extra)
    return Consumer(conf)


def committed(c, what):
    end = time.monotonic() + remaining(20)
    while True:
        try:
            got = sorted(c.committed(tps, timeout=remaining(10)), key=lambda tp: tp.partition)
            errors = [tp.error for tp in got if tp.error is not None]
            if not errors:
                return got
            err = errors[0]
        except KafkaException as e:
            err = e
        # Right after a restart the coordinator may still be loading: retry a little.
        if time.monotonic() > end:
            fail(f"committed() for {what}: {err}")
        print(f"note: committed() for {what}: {err}; retrying", flush=True)
        time.sleep(0.5)


def expect_committed(c, group, want, metadata):
    got = committed(c, group)
    offsets = [tp.offset for tp in got]
    if offsets != want:
        fail(f"{group}: committed() = {offsets}, expected {want}")
    if metadata:
        meta = [tp.metadata for tp in got]
        if meta != [f"g-p{p}" for p in range(PARTITIONS)]:
            fail(f"{group}: committed metadata {meta}, expected g-p<partition>")


def read_to_end(c, on_record, progress):
    """Consumes with `c` until every partition reports its end at offset N, handing each record
    to on_record; progress() says how far it got if that takes more than 30 s."""
    eof = set()
    end = time.monotonic() + remaining(30)
    while len(eof) < PARTITIONS:
        for m in c.consume(num_messages=200, timeout=0.2):
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    fail(f"{group_g}: {m.error()}")
                if m.offset() == N:
                    eof.add(m.partition())
            else:
                on_record(m)
        if time.monotonic() > end:
            fail(f"{group_g}: {progress()}, reached the end of {sorted(eof)} in 30 s; "
                 f"client errors {client_errors[:5]}")


if phase == "commit":
    admin = create_topic_confluent(common, topic, PARTITIONS)
    producer = Producer(dict(common, **{"acks": "all", "enable.idempotence": True}))
    errors = produce_sequenced(producer, topic, [0] * PARTITIONS, N)
    if producer.flush(remaining(20)) or errors:
        fail(f"produce failed: {errors[:5]} {client_errors[:5]}")
    ok(f"created {topic} and produced {N} records per partition")

    g = consumer(group_g)
    g.subscribe([topic])
    seen = []
    read_to_end(g, seen.append, lambda: f"read {len(seen)} records")
    if len(seen) != N * PARTITIONS:
        fail(f"{group_g}: read {len(seen)} records, expected {N * PARTITIONS}")
    try:
        g.commit(offsets=[TopicPartition(topic, p, 1 + p) for p in range(PARTITIONS)],
                 asynchronous=False)
        g.commit(offsets=[TopicPartition(topic, p, WANT_G[p], metadata=f"g-p{p}")
                          for p in range(PARTITIONS)], asynchronous=False)
    except KafkaException as e:
        fail(f"{group_g}: commit failed: {e}")
    expect_committed(g, group_g, WANT_G, metadata=True)
    g.close()
    ok(f"{group_g} (a member, generation-checked commits) committed {WANT_G} and left")

    s = consumer(group_s)
    s.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    try:
        s.commit(offsets=[TopicPartition(topic, p, WANT_S[p]) for p in range(PARTITIONS)],
                 asynchronous=False)
    except KafkaException as e:
        fail(f"{group_s}: commit without joining (generation -1) failed: {e}")
    expect_committed(s, group_s, WANT_S, metadata=False)
    s.close()
    ok(f"{group_s} (assign(), no membership) committed {WANT_S}")
    print("PASS groups_restart commit", flush=True)
    sys.exit(0)

# --- resume --------------------------------------------------------------------------------------
s = consumer(group_s)
expect_committed(s, group_s, WANT_S, metadata=False)
s.close()
ok(f"after the crash {group_s} still has {WANT_S}")

g = consumer(group_g)
expect_committed(g, group_g, WANT_G, metadata=True)
ok(f"after the crash {group_g} still has {WANT_G} with its metadata")

g.subscribe([topic])
first = {}
count = 0


def check_resumed(m):
    global count
    p, o = m.partition(), m.offset()
    if p not in first:
        first[p] = o
        if o != WANT_G[p]:
            fail(f"{group_g} resumed partition {p} at offset {o}, committed {WANT_G[p]}")
    if m.value().decode() != f"p{p}-{o}":
        fail(f"partition {p} offset {o}: value {m.value()!r} (the log changed in the crash?)")
    count += 1


read_to_end(g, check_resumed, lambda: f"resumed at {first}")
want_count = sum(N - o for o in WANT_G)
if count != want_count:
    fail(f"{group_g}: read {count} records after resuming, expected {want_count}")
g.close()
ok(f"{group_g} resumed exactly at the committed offsets {WANT_G} and read the remaining "
   f"{count} records")
print("PASS groups_restart resume", flush=True)
