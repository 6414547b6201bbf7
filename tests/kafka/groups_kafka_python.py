#!/usr/bin/env python3
"""Consumer groups through Spate's group coordinator with kafka-python 3.x (pip, pure Python).

Checks: a 4-partition topic pre-filled with sequenced records (value "p<partition>-<seq>"); two
group members (one KafkaConsumer per thread, range assignor, no auto commit, commit() after each
processed poll) get 2 partitions each and process every record; one member close()s (LeaveGroup)
and the other owns all 4 well before its session timeout would have expired; more records are
produced and processed; the last member closes; more records are produced; a new consumer in the
group sees committed() equal to what was processed and resumes exactly there (its first record
in every partition is at the committed offset), reading the rest.

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
"""
import os
import sys
import threading
import time

import kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    STAMP, bootstrap_from_env, create_topic_kafka_python, fail, fail_with_os_exit, finish, ok,
    start_budget, topic_name)

fail_with_os_exit()  # member threads may be blocked in the client
DEADLINE = start_budget(75)
PARTITIONS = 4
PREFILL = 100
SESSION_MS = 10000
HEARTBEAT_MS = 500

bootstrap = bootstrap_from_env()
topic = topic_name("groups-kafka-python")
group = f"{topic}-group-{STAMP}" if os.environ.get("SPATE_TOPIC") else f"{topic}-group"
print(f"kafka-python {kafka.__version__}, python {sys.executable}, bootstrap {bootstrap}, "
      f"topic {topic}, group {group}", flush=True)
common = {"bootstrap_servers": bootstrap, "request_timeout_ms": 15000}
admin, _ = create_topic_kafka_python(common, "spate-groups-admin", topic, PARTITIONS)
ok(f"created {topic} with {PARTITIONS} partitions")

producer = KafkaProducer(client_id="spate-groups-producer", linger_ms=5, max_block_ms=10000,
                         **common)
next_seq = [0] * PARTITIONS


def produce(per_partition):
    futures = []
    for _ in range(per_partition):
        for p in range(PARTITIONS):
            seq = next_seq[p]
            next_seq[p] += 1
            futures.append((p, seq, producer.send(topic, key=f"k{p}-{seq % 5}".encode(),
                                                  value=f"p{p}-{seq}".encode(), partition=p)))
    producer.flush(timeout=20)
    for p, seq, f in futures:
        try:
            md = f.get(timeout=10)
        except Exception as e:  # noqa: BLE001
            fail(f"produce p{p}-{seq} failed: {e!r}")
        if md.offset != seq:
            fail(f"p{p}-{seq} was written at offset {md.offset}")


produce(PREFILL)
ok(f"produced {PREFILL} records per partition")

lock = threading.Lock()
processed = {}   # (partition, offset) -> [member]


class Member(threading.Thread):
    def __init__(self, name):
        super().__init__(daemon=True, name=name)
        self.assigned = set()
        self.stop = threading.Event()
        self.closed = threading.Event()
        self.error = None
        self.commit_failures = []
        self.closed_at = None

    def close_or_fail(self):
        """Stops the member and waits for its consumer to close (LeaveGroup)."""
        self.stop.set()
        if not self.closed.wait(timeout=15):
            fail(f"member {self.name}'s close() did not return within 15 s")
        if self.error:
            fail(f"member {self.name}: {self.error}")

    def run(self):
        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                with lock:
                    member.assigned -= {tp.partition for tp in revoked}

            def on_partitions_assigned(self, assigned):
                with lock:
                    member.assigned = {tp.partition for tp in assigned}

        try:
            consumer = KafkaConsumer(
                client_id=f"spate-groups-{self.name}", group_id=group,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                max_poll_interval_ms=30000,
                partition_assignment_strategy=[RangePartitionAssignor], **common)
            consumer.subscribe(topics=[topic], listener=Listener())
            while not self.stop.is_set():
                batches = consumer.poll(timeout_ms=200, max_records=50)
                n = 0
                for tp, records in batches.items():
                    for r in records:
                        n += 1
                        with lock:
                            processed.setdefault((r.partition, r.offset), []).append(
                                (self.name, r.value.decode()))
                if n:
                    try:
                        consumer.commit()
                    except Exception as e:  # noqa: BLE001 (a rebalance can fence a commit)
                        self.commit_failures.append(repr(e))
            consumer.close(autocommit=False)
            self.closed_at = time.monotonic()
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
        finally:
            self.closed.set()


def owned(members):
    with lock:
        return {m.name: sorted(m.assigned) for m in members}


def processed_all():
    with lock:
        return all((p, o) in processed for p in range(PARTITIONS) for o in range(next_seq[p]))


def wait_for(what, members, want, timeout):
    end = time.monotonic() + timeout
    while True:
        for m in members:
            if m.error or m.closed.is_set():
                fail(f"{what}: member {m.name} stopped: {m.error}")
        with lock:
            got = {m.name: sorted(m.assigned) for m in members}
        if got == want and processed_all():
            return time.monotonic()
        if time.monotonic() > min(end, DEADLINE):
            with lock:
                n = len(processed)
            fail(f"{what}: after {timeout} s assignments {got} (want {want}), processed {n} of "
                 f"{sum(next_seq)} records")
        time.sleep(0.05)


a, b = Member("a"), Member("b")
a.start()
b.start()
t0 = time.monotonic()
end = time.monotonic() + 30
while True:
    got = owned([a, b])
    if all(len(v) == 2 for v in got.values()) and \
            sorted(got["a"] + got["b"]) == list(range(PARTITIONS)) and processed_all():
        break
    for m in (a, b):
        if m.error or m.closed.is_set():
            fail(f"member {m.name} stopped: {m.error}")
    if time.monotonic() > min(end, DEADLINE):
        fail(f"two members: after 30 s assignments {got}, processed {len(processed)} of "
             f"{sum(next_seq)}")
    time.sleep(0.05)
ok(f"two members own 2 partitions each {got} and processed all {sum(next_seq)} records "
   f"({int((time.monotonic() - t0) * 1000)} ms)")

# a leaves the group: b takes everything long before a session timeout.
a.close_or_fail()
left_at = a.closed_at
produce(20)
t = wait_for("after a left", [b], {"b": list(range(PARTITIONS))}, 20)
took = t - left_at
ok(f"after a closed (LeaveGroup), b owns all {PARTITIONS} partitions and processed everything "
   f"({int(took * 1000)} ms)")
print(f"rebalance_ms={int(took * 1000)} (member left -> survivor owns all and has consumed)",
      flush=True)
if took > SESSION_MS / 1000 * 0.8:
    fail(f"b took {took:.1f} s to take over, about a session timeout ({SESSION_MS} ms): "
         f"LeaveGroup did not trigger a rebalance")

# b stops; its commits must survive for the next consumer.
b.close_or_fail()
committed_at = list(next_seq)
produce(30)
ok(f"both members closed; processed up to {committed_at}; produced 30 more per partition")
failures = a.commit_failures + b.commit_failures
if failures:
    print(f"note: {len(failures)} commit(s) fenced by rebalances: {failures[:3]}", flush=True)

c = KafkaConsumer(client_id="spate-groups-c", group_id=group, enable_auto_commit=False,
                  auto_offset_reset="earliest", session_timeout_ms=SESSION_MS,
                  heartbeat_interval_ms=HEARTBEAT_MS, **common)
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
got = [c.committed(tp) for tp in tps]
if got != committed_at:
    fail(f"committed() for {group} = {got}, expected {committed_at}")
ok(f"committed offsets survive the members: {got}")
c.subscribe(topics=[topic])
first = {}
seen = set()
end = time.monotonic() + 20
while len(seen) < sum(next_seq) - sum(committed_at):
    if time.monotonic() > min(end, DEADLINE):
        fail(f"resuming consumer: read {len(seen)} of {sum(next_seq) - sum(committed_at)} new "
             f"records; assignment {sorted(tp.partition for tp in c.assignment())}")
    for tp, records in c.poll(timeout_ms=200).items():
        for r in records:
            first.setdefault(r.partition, r.offset)
            if r.offset < committed_at[r.partition]:
                fail(f"resuming consumer read partition {r.partition} offset {r.offset}, before "
                     f"the committed offset {committed_at[r.partition]}")
            if r.value.decode() != f"p{r.partition}-{r.offset}":
                fail(f"partition {r.partition} offset {r.offset}: value {r.value!r}")
            seen.add((r.partition, r.offset))
if [first.get(p) for p in range(PARTITIONS)] != committed_at:
    fail(f"resuming consumer started at {first}, committed {committed_at}")
c.commit()
c.close(autocommit=False)
ok(f"a new consumer in the group resumed exactly at the committed offsets {committed_at} and read "
   f"the {len(seen)} newer records")
finish("groups_kafka_python")
os._exit(0)
