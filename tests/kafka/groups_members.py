#!/usr/bin/env python3
"""Consumer-group membership through Spate's group coordinator with confluent-kafka (librdkafka).

Runs under pip's confluent-kafka 2.x (`python3`) and Debian's confluent-kafka 1.7 / librdkafka
2.0.2 (`/usr/bin/python3`): the member processes are this same script run by the same Python.

Checks: a 6-partition topic pre-filled with sequenced records (value "p<partition>-<seq>");
three member processes (subscribe, range assignor, session.timeout.ms 6000, heartbeats every
500 ms, no auto commit, a synchronous commit after each processed batch: at-least-once) each
get 2 partitions and together cover all 6; one member is killed with SIGKILL and after its
session times out the two survivors own 3 each; a fourth member joins and everyone is back to 2
each; records keep being produced throughout. At the end the members stop cleanly (LeaveGroup),
the group's committed offsets equal the end of every partition, and a fresh reader (assign()
from the beginning) finds that every record was processed by some member at least once: no
offset was skipped across the rebalances. Prints rebalance_ms=<n> (group of three forming, and
a fourth member joining) and failover_ms=<n> (kill to survivors consuming).

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
Internal: `groups_members.py member <name>` with SPATE_GROUP and SPATE_TOPIC set is one member.
"""
import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    STAMP, bootstrap_from_env, client_errors, confluent_conf, confluent_versions,
    create_topic_confluent, fail, fail_later, finish, ok, produce_sequenced, start_budget,
    topic_name)

PARTITIONS = 6
PREFILL = 150          # records per partition before any member starts
TICK_S = 0.1           # while members run: one more record per partition every TICK_S
SESSION_MS = 6000
HEARTBEAT_MS = 500
BUDGET_S = 75


# ------------------------------------------------------------------------------------------------
# Member mode: one group member, reporting on stdout as JSON lines.
# ------------------------------------------------------------------------------------------------
def member_main(name):
    bootstrap = os.environ["SPATE_KAFKA"]
    topic = os.environ["SPATE_TOPIC"]
    group = os.environ["SPATE_GROUP"]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(BUDGET_S + 10)  # never outlive the test

    def emit(**event):
        event["member"] = name
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def error_cb(err):
        emit(ev="client_error", err=str(err))

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": f"spate-member-{name}",
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "max.poll.interval.ms": 30000,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "socket.timeout.ms": 10000,
        "error_cb": error_cb,
    })

    def on_assign(_consumer, partitions):
        emit(ev="assign", parts=sorted(tp.partition for tp in partitions))

    def on_revoke(_consumer, partitions):
        emit(ev="revoke", parts=sorted(tp.partition for tp in partitions))

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    emit(ev="start", pid=os.getpid())
    while not stop:
        msgs = consumer.consume(num_messages=50, timeout=0.2)
        recs = []
        for m in msgs:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    emit(ev="error", err=str(m.error()))
                continue
            recs.append([m.partition(), m.offset(), (m.value() or b"").decode("utf-8", "replace")])
        if not recs:
            continue
        # Process (report) first, then commit: at-least-once.
        emit(ev="batch", recs=recs)
        upto = {}
        for p, o, _ in recs:
            upto[p] = max(upto.get(p, -1), o + 1)
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in sorted(upto.items())],
                            asynchronous=False)
            emit(ev="committed", offsets=sorted(upto.items()))
        except KafkaException as e:
            # A rebalance can fence the commit (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION...):
            # the partition's next owner processes the batch again.
            emit(ev="commit_failed", err=str(e.args[0] if e.args else e))
    consumer.close()
    emit(ev="closed")
    sys.exit(0)


if len(sys.argv) >= 3 and sys.argv[1] == "member":
    member_main(sys.argv[2])

# ------------------------------------------------------------------------------------------------
# Test mode.
# ------------------------------------------------------------------------------------------------
DEADLINE = start_budget(BUDGET_S)

bootstrap = bootstrap_from_env()
topic = topic_name("groups-members")
group = f"{topic}-group-{STAMP}" if os.environ.get("SPATE_TOPIC") else f"{topic}-group"
print(f"{confluent_versions()}, python {sys.executable}, bootstrap {bootstrap}, topic {topic}, "
      f"group {group}", flush=True)
common = confluent_conf(bootstrap)
admin = create_topic_confluent(common, topic, PARTITIONS)
ok(f"created {topic} with {PARTITIONS} partitions")

# --- Producing: sequenced records, explicit partitions ------------------------------------------
producer = Producer(dict(common, **{"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                    "message.timeout.ms": 20000}))
next_seq = [0] * PARTITIONS
delivered = {}   # (partition, offset) -> value
delivery_errors = []


def on_delivery(err, msg):
    if err is not None:
        delivery_errors.append(str(err))
    else:
        delivered[(msg.partition(), msg.offset())] = msg.value().decode()


def produce(rounds):
    produce_sequenced(producer, topic, next_seq, rounds, key=lambda p, seq: f"k{p}-{seq % 11}",
                      on_delivery=on_delivery)


produce(PREFILL)
if producer.flush(20):
    fail(f"pre-fill: records undelivered after 20 s; client errors {client_errors[:5]}")
if delivery_errors:
    fail(f"pre-fill: delivery errors {delivery_errors[:5]}")
ok(f"pre-filled {len(delivered)} records ({PREFILL} per partition)")

last_tick = [time.monotonic()]
producing = [True]


def tick():
    """Keeps records flowing into every partition while members come and go."""
    if producing[0] and time.monotonic() - last_tick[0] >= TICK_S:
        last_tick[0] = time.monotonic()
        produce(1)
    producer.poll(0)


# --- Members -------------------------------------------------------------------------------------
lock = threading.Lock()


class Member:
    def __init__(self, name):
        self.name = name
        self.assigned = set()
        self.consuming = False      # has processed a batch since its latest assignment
        self.events = []
        self.started = time.monotonic()
        env = dict(os.environ, SPATE_KAFKA=bootstrap, SPATE_TOPIC=topic, SPATE_GROUP=group)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "member", name],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                print(f"[{self.name}] {line.rstrip()}", file=sys.stderr, flush=True)
                continue
            event["t"] = time.monotonic()
            with lock:
                self.events.append(event)
                kind = event["ev"]
                if kind == "assign":
                    self.assigned = set(event["parts"])
                    self.consuming = False
                elif kind == "revoke":
                    self.assigned -= set(event["parts"])
                    self.consuming = False
                elif kind == "batch":
                    if self.assigned:
                        self.consuming = True
                    for p, o, v in event["recs"]:
                        processed.setdefault((p, o), []).append((self.name, v))
                elif kind in ("client_error", "error", "commit_failed"):
                    print(f"[{self.name}] {kind}: {event['err']}", file=sys.stderr, flush=True)

    def count(self, kind):
        with lock:
            return sum(1 for e in self.events if e["ev"] == kind)


processed = {}   # (partition, offset) -> [(member, value)]
members = {}


@atexit.register
def kill_members():
    for m in members.values():
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()


def start(name):
    members[name] = Member(name)
    return members[name]


def describe(names):
    with lock:
        return {n: sorted(members[n].assigned) for n in names}


def wait_until(what, names, per_member, timeout):
    """Waits for `names` to own `per_member` partitions each, all PARTITIONS between them, and
    each to have processed a batch since its latest assignment. Returns when that held."""
    end = time.monotonic() + timeout
    while True:
        tick()
        for n in names:
            if members[n].proc.poll() is not None:
                fail(f"{what}: member {n} exited with {members[n].proc.returncode}")
        with lock:
            owned = [members[n].assigned for n in names]
            union = set().union(*owned)
            settled = (all(len(o) == per_member for o in owned)
                       and sum(len(o) for o in owned) == PARTITIONS
                       and union == set(range(PARTITIONS))
                       and all(members[n].consuming for n in names))
        if settled:
            return time.monotonic()
        if time.monotonic() > end or time.monotonic() > DEADLINE:
            fail(f"{what}: not settled after {timeout} s: assignments {describe(names)}, "
                 f"consuming {[members[n].consuming for n in names]}, "
                 f"client errors {client_errors[:5]}")
        time.sleep(0.05)


# Three members.
for n in ("m0", "m1", "m2"):
    start(n)
third_started = members["m2"].started
t = wait_until("three members", ["m0", "m1", "m2"], 2, 30)
ok(f"three members own 2 partitions each, all {PARTITIONS} covered: {describe(['m0', 'm1', 'm2'])}")
print(f"rebalance_ms={int((t - third_started) * 1000)} (group of three forming: third member "
      f"started -> all three assigned and consuming)", flush=True)

# Let them work a little under a stable assignment, then kill one.
end = time.monotonic() + 1.0
while time.monotonic() < end:
    tick()
    time.sleep(0.05)
victim = members["m0"]
os.kill(victim.proc.pid, signal.SIGKILL)
victim.proc.wait()
killed_at = time.monotonic()
ok(f"killed member m0 (pid {victim.proc.pid}) with SIGKILL; it owned "
   f"{describe(['m0'])['m0']}")
t = wait_until("after SIGKILL", ["m1", "m2"], 3, SESSION_MS / 1000 + 20)
failover = t - killed_at
ok(f"survivors own 3 partitions each: {describe(['m1', 'm2'])}")
print(f"failover_ms={int(failover * 1000)} (SIGKILL -> survivors assigned and consuming; "
      f"session.timeout.ms={SESSION_MS})", flush=True)
if failover < SESSION_MS / 1000 * 0.8:
    fail_later(f"partitions moved {failover:.1f} s after the kill, before the "
               f"{SESSION_MS} ms session timeout could have expired")

# A new member joins.
joiner = start("m3")
t = wait_until("new member", ["m1", "m2", "m3"], 2, 30)
ok(f"after m3 joined: {describe(['m1', 'm2', 'm3'])}")
print(f"rebalance_ms={int((t - joiner.started) * 1000)} (new member started -> all three "
      f"assigned and consuming)", flush=True)

# Stop producing; wait until the members processed everything.
producing[0] = False
if producer.flush(20):
    fail("records undelivered after 20 s")
if delivery_errors:
    fail(f"delivery errors: {delivery_errors[:5]}")
ends = [0] * PARTITIONS
for (p, o) in delivered:
    ends[p] = max(ends[p], o + 1)
if sum(ends) != len(delivered) or ends != next_seq:
    fail(f"acknowledged offsets are not dense: ends {ends}, sent {next_seq}, "
         f"{len(delivered)} acknowledged")
ok(f"produced {len(delivered)} records in all; partition ends {ends}")

end = time.monotonic() + 20
while True:
    with lock:
        missing = [(p, o) for p in range(PARTITIONS) for o in range(ends[p])
                   if (p, o) not in processed]
    if not missing:
        break
    for n in ("m1", "m2", "m3"):
        if members[n].proc.poll() is not None:
            fail(f"member {n} exited with {members[n].proc.returncode} while draining")
    if time.monotonic() > end or time.monotonic() > DEADLINE:
        fail(f"members did not process {len(missing)} records within 20 s, e.g. {missing[:10]}; "
             f"assignments {describe(['m1', 'm2', 'm3'])}")
    time.sleep(0.1)
ok("members processed every produced record")

# Stop the members cleanly.
for n in ("m1", "m2", "m3"):
    members[n].proc.send_signal(signal.SIGTERM)
for n in ("m1", "m2", "m3"):
    try:
        rc = members[n].proc.wait(timeout=max(1, min(15, DEADLINE - time.monotonic())))
    except subprocess.TimeoutExpired:
        fail(f"member {n} did not exit within 15 s of SIGTERM (consumer.close() hangs?)")
    members[n].reader.join(timeout=5)
    if rc != 0:
        fail(f"member {n} exited with {rc}")
    if members[n].count("closed") != 1:
        fail(f"member {n} did not report a clean close")
ok("members m1, m2, m3 closed cleanly")

commit_failures = sum(m.count("commit_failed") for m in members.values())
commits = sum(m.count("committed") for m in members.values())

# --- Check: committed offsets, and a fresh reader against what was processed ---------------------
reader = Consumer(dict(common, **{"group.id": group, "enable.auto.commit": False,
                                  "enable.auto.offset.store": False,
                                  "auto.offset.reset": "error"}))
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
try:
    committed = reader.committed(tps, timeout=10)
except KafkaException as e:
    fail(f"committed() (OffsetFetch) for {group} failed: {e}")
got_committed = [tp.offset for tp in sorted(committed, key=lambda tp: tp.partition)]
if got_committed != ends:
    fail_later(f"group's committed offsets {got_committed} != partition ends {ends}")
else:
    ok(f"group's committed offsets equal the partition ends {ends}")

reader.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
               for p in range(PARTITIONS)])
stored = {}
end = time.monotonic() + 20
while len(stored) < len(delivered):
    if time.monotonic() > end or time.monotonic() > DEADLINE:
        fail(f"fresh reader got {len(stored)} of {len(delivered)} records")
    for m in reader.consume(num_messages=500, timeout=0.2):
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                fail(f"fresh reader: {m.error()}")
            continue
        stored[(m.partition(), m.offset())] = m.value().decode()
reader.close()
if stored != delivered:
    bad = [k for k in delivered if stored.get(k) != delivered[k]][:5]
    fail(f"the log differs from what was acknowledged at {bad}")
wrong_seq = [(p, o, v) for (p, o), v in stored.items() if v != f"p{p}-{o}"][:5]
if wrong_seq:
    fail(f"records are not in sequence (value p<partition>-<offset>): {wrong_seq}")
ok(f"fresh reader: {len(stored)} records, each partition in sequence")

skipped = sorted(k for k in stored if k not in processed)
if skipped:
    fail(f"{len(skipped)} records were never processed by any member (skipped across a "
         f"rebalance), e.g. {skipped[:10]}")
wrong = [(k, processed[k]) for k in stored if any(v != stored[k] for _, v in processed[k])][:5]
if wrong:
    fail(f"members processed values that differ from the log: {wrong}")
extra = sorted(k for k in processed if k not in stored)
if extra:
    fail(f"members processed records that are not in the log: {extra[:10]}")
duplicates = sum(len(v) - 1 for v in processed.values())
ok(f"no record skipped: all {len(stored)} processed at least once ({duplicates} processed again "
   f"after rebalances; {commits} commits, {commit_failures} fenced by a rebalance)")

finish("groups_members")
