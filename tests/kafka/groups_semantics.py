#!/usr/bin/env python3
"""Consumer-group semantics through Spate's group coordinator with pip's confluent-kafka 2.x.

Checks, on a 3-partition topic with sequenced records (value "p<partition>-<seq>"):
  - two groups read the same topic independently and each sees every record (group A has two
    members that split the partitions, group B one member);
  - OffsetFetch for a group that never committed gives no offset (committed() = OFFSET_INVALID
    -1001), and after commits gives exactly what was committed (also through the AdminClient's
    list_consumer_group_offsets);
  - with no committed offset, auto.offset.reset=earliest starts at the log start and =latest
    sees only records produced after it joined;
  - AdminClient list_consumer_groups (ListGroups) shows the groups, Stable;
    describe_consumer_groups (DescribeGroups) shows group A's two members, the range assignor,
    and member assignments covering every partition; list_groups (the old API) as well;
  - delete_consumer_groups: a group with members is refused (NON_EMPTY_GROUP), an unknown group
    gives GROUP_ID_NOT_FOUND, an empty group is deleted together with its committed offsets.

Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
"""
import os
import sys
import time
import warnings

import confluent_kafka
from confluent_kafka import (OFFSET_INVALID, Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions,
                             KafkaError, KafkaException, Producer, TopicPartition)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    STAMP, bootstrap_from_env, client_errors, confluent_conf, confluent_versions,
    create_topic_confluent, fail, fail_later, finish, ok, produce_sequenced, remaining,
    start_budget, topic_name)

BUDGET_S = 75
start_budget(BUDGET_S)
PARTITIONS = 3
N = 60  # records per partition

bootstrap = bootstrap_from_env()
topic = topic_name("groups-semantics")
print(f"{confluent_versions()}, python {sys.executable}, bootstrap {bootstrap}, topic {topic}",
      flush=True)
if int(confluent_kafka.__version__.split(".")[0]) < 2:
    fail("needs confluent-kafka 2.x (the consumer-group AdminClient APIs)")

common = confluent_conf(bootstrap)
admin = create_topic_confluent(common, topic, PARTITIONS)
ok(f"created {topic} with {PARTITIONS} partitions")

producer = Producer(dict(common, **{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
ends = [0] * PARTITIONS


def produce(per_partition):
    errors = produce_sequenced(producer, topic, ends, per_partition,
                               key=lambda _p, seq: f"k{seq % 4}")
    if producer.flush(remaining(20)) or errors:
        fail(f"produce failed: {errors[:5]}, client errors {client_errors[:5]}")


produce(N)
ok(f"produced {N} records per partition")

stamp_groups = f"{topic}-{STAMP}" if os.environ.get("SPATE_TOPIC") else topic
group_a, group_b = f"{stamp_groups}-a", f"{stamp_groups}-b"
group_latest, group_none = f"{stamp_groups}-latest", f"{stamp_groups}-never"
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]


def consumer(group, reset="earliest", **extra):
    conf = dict(common, **{
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": reset,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": "range",
        "enable.partition.eof": True,
    })
    conf.update(extra)
    return Consumer(conf)


def committed(c):
    try:
        got = c.committed(tps, timeout=remaining(10))
    except KafkaException as e:
        fail(f"committed() (OffsetFetch) failed: {e}")
    for tp in got:
        if tp.error is not None:
            fail(f"committed() partition {tp.partition}: {tp.error}")
    return [tp.offset for tp in sorted(got, key=lambda tp: tp.partition)]


# --- OffsetFetch with nothing committed ---------------------------------------------------------
never = consumer(group_none)
got = committed(never)
if got != [OFFSET_INVALID] * PARTITIONS:
    fail(f"committed() for a group that never committed: {got}, expected OFFSET_INVALID "
         f"({OFFSET_INVALID}) for every partition")
never.close()
ok(f"OffsetFetch for a group with nothing committed: no offsets ({OFFSET_INVALID})")

# --- Two groups read the same records -----------------------------------------------------------
members = {"a1": consumer(group_a, **{"client.id": "spate-a1"}),
           "a2": consumer(group_a, **{"client.id": "spate-a2"}),
           "b1": consumer(group_b, **{"client.id": "spate-b1"})}
groups = {"a1": group_a, "a2": group_a, "b1": group_b}
assigned = {name: set() for name in members}


def listeners(name):
    def on_assign(_c, parts):
        assigned[name] = {tp.partition for tp in parts}

    def on_revoke(_c, parts):
        assigned[name] -= {tp.partition for tp in parts}
    return on_assign, on_revoke


for name, c in members.items():
    on_assign, on_revoke = listeners(name)
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)

seen = {group_a: {}, group_b: {}}   # (partition, offset) -> value
positions = {name: {} for name in members}


def poll_all(timeout=0.05):
    for name, c in members.items():
        for m in c.consume(num_messages=200, timeout=timeout):
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    fail(f"{name}: {m.error()}")
                continue
            seen[groups[name]][(m.partition(), m.offset())] = m.value().decode()
            positions[name][m.partition()] = m.offset() + 1


want = {(p, o): f"p{p}-{o}" for p in range(PARTITIONS) for o in range(N)}
end = time.monotonic() + remaining(30)
while True:
    poll_all()
    settled = (seen[group_a] == want and seen[group_b] == want
               and len(assigned["a1"]) + len(assigned["a2"]) == PARTITIONS
               and assigned["a1"] and assigned["a2"]
               and len(assigned["b1"]) == PARTITIONS)
    if settled:
        break
    if time.monotonic() > end:
        fail(f"groups did not read everything in 30 s: group A read {len(seen[group_a])}, "
             f"group B {len(seen[group_b])} of {len(want)}; assignments {assigned}; "
             f"client errors {client_errors[:5]}")
if assigned["a1"] & assigned["a2"]:
    fail(f"group A members share partitions: {assigned}")
ok(f"group A (members own {sorted(assigned['a1'])} and {sorted(assigned['a2'])}) and group B "
   f"(one member, {sorted(assigned['b1'])}) each read all {len(want)} records from the start")

for name, c in members.items():
    offsets = [TopicPartition(topic, p, o) for p, o in sorted(positions[name].items())]
    try:
        c.commit(offsets=offsets, asynchronous=False)
    except KafkaException as e:
        fail(f"{name}: commit {offsets} failed: {e}")
got_a = committed(members["a1"])
got_b = committed(members["b1"])
if got_a != ends or got_b != ends:
    fail(f"committed() after commits: group A {got_a}, group B {got_b}, expected {ends}")
ok(f"both groups committed {ends}; committed() returns it")

try:
    listed = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group_a, tps)])[group_a].result(timeout=remaining(15))
    got = [tp.offset for tp in sorted(listed.topic_partitions, key=lambda tp: tp.partition)]
    if got != ends:
        fail_later(f"list_consumer_group_offsets({group_a}) = {got}, expected {ends}")
    else:
        ok(f"AdminClient list_consumer_group_offsets shows {got}")
except Exception as e:  # noqa: BLE001
    fail_later(f"list_consumer_group_offsets failed: {e!r}")

# --- auto.offset.reset=latest with no committed offset ------------------------------------------
latest = consumer(group_latest, reset="latest")
latest.subscribe([topic])
eof = {}
end = time.monotonic() + remaining(20)
while len(eof) < PARTITIONS:
    poll_all(0)
    for m in latest.consume(num_messages=100, timeout=0.1):
        if m.error() and m.error().code() == KafkaError._PARTITION_EOF:
            eof[m.partition()] = m.offset()
        elif m.error():
            fail(f"latest: {m.error()}")
        else:
            fail(f"auto.offset.reset=latest read partition {m.partition()} offset {m.offset()} "
                 f"before anything new was produced")
    if time.monotonic() > end:
        fail(f"auto.offset.reset=latest consumer: reached the end of only {sorted(eof)} in 20 s")
if [eof[p] for p in range(PARTITIONS)] != ends:
    fail(f"auto.offset.reset=latest started at {eof}, expected the log ends {ends}")
before = list(ends)
produce(5)
late = {}
end = time.monotonic() + remaining(15)
while len(late) < 5 * PARTITIONS:
    poll_all(0)
    for m in latest.consume(num_messages=100, timeout=0.1):
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                fail(f"latest: {m.error()}")
            continue
        if m.offset() < before[m.partition()]:
            fail(f"auto.offset.reset=latest read old record {m.partition()}/{m.offset()}")
        late[(m.partition(), m.offset())] = m.value().decode()
    if time.monotonic() > end:
        fail(f"auto.offset.reset=latest consumer read {len(late)} of {5 * PARTITIONS} new records")
latest.close()
ok(f"auto.offset.reset=latest (no committed offset) started at the ends {before} and read only "
   f"the {len(late)} records produced after it joined")

# --- Committing in on_revoke (while the group prepares a rebalance) -----------------------------
# The eager protocol's rebalance listener commits what it processed before giving partitions up.
# The group is PreparingRebalance then (this member has not rejoined yet) and the generation is
# still current: Kafka accepts such commits (it answers REBALANCE_IN_PROGRESS only while
# CompletingRebalance). kafkajs commits the same way when a heartbeat reports a rebalance.
group_c = f"{stamp_groups}-revoke"
revoke_commits = []


def commit_on_revoke(c, parts):
    offsets = [TopicPartition(topic, tp.partition, 5 + tp.partition) for tp in parts]
    try:
        c.commit(offsets=offsets, asynchronous=False)
        revoke_commits.append(("ok", sorted(tp.partition for tp in parts)))
    except KafkaException as e:
        revoke_commits.append(("error", str(e.args[0] if e.args else e)))


c1 = consumer(group_c, **{"client.id": "spate-c1"})
c1.subscribe([topic], on_revoke=commit_on_revoke)
end = time.monotonic() + remaining(20)
while len(c1.assignment()) < PARTITIONS:
    poll_all(0)
    c1.consume(num_messages=100, timeout=0.1)
    if time.monotonic() > end:
        fail(f"{group_c}: the first member was not assigned every partition in 20 s")
c2 = consumer(group_c, **{"client.id": "spate-c2"})
c2.subscribe([topic])
end = time.monotonic() + remaining(20)
while not (revoke_commits and c1.assignment() and c2.assignment()):
    poll_all(0)
    c1.consume(num_messages=100, timeout=0.05)
    c2.consume(num_messages=100, timeout=0.05)
    if time.monotonic() > end:
        fail(f"{group_c}: a second member joining did not rebalance in 20 s: revoke commits "
             f"{revoke_commits}, assignments {c1.assignment()} / {c2.assignment()}")
want_c = [5 + p for p in range(PARTITIONS)]
if revoke_commits[0][0] != "ok":
    fail_later(f"a commit from on_revoke (group PreparingRebalance, generation still current) "
               f"failed: {revoke_commits[0][1]}; Kafka accepts it (ClassicGroup."
               f"validateOffsetCommit answers REBALANCE_IN_PROGRESS only in CompletingRebalance)")
elif committed(c2) != want_c:
    fail_later(f"{group_c}: on_revoke committed {want_c} successfully, committed() = "
               f"{committed(c2)}")
else:
    ok(f"a commit from on_revoke while the group prepares a rebalance succeeds: {want_c}")
c1.close()
c2.close()

# --- ListGroups / DescribeGroups ----------------------------------------------------------------
poll_all(0)
try:
    result = admin.list_consumer_groups(request_timeout=15).result(timeout=remaining(20))
except Exception as e:  # noqa: BLE001
    fail(f"list_consumer_groups failed: {e!r}")
if result.errors:
    fail_later(f"list_consumer_groups errors: {result.errors}")
listing = {g.group_id: g for g in result.valid}
for g in (group_a, group_b):
    if g not in listing:
        fail(f"list_consumer_groups does not show {g}: {sorted(listing)}")
    if listing[g].state != ConsumerGroupState.STABLE:
        fail_later(f"list_consumer_groups: {g} is {listing[g].state}, expected STABLE")
    if listing[g].is_simple_consumer_group:
        fail_later(f"list_consumer_groups: {g} is listed as a simple group (protocol type should "
                   f"be 'consumer')")
if group_latest not in listing:
    print(f"note: list_consumer_groups does not show {group_latest} (closed, never committed); "
          f"Kafka would list it as Empty until its next offsets expiration check", flush=True)
ok(f"list_consumer_groups shows {group_a} and {group_b} "
   f"({listing[group_a].state}, {listing[group_b].state}); {len(listing)} groups in all")

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = {g.id: g for g in admin.list_groups(timeout=remaining(15))}
    if group_a not in old:
        fail_later(f"list_groups (old API) does not show {group_a}: {sorted(old)}")
    elif len(old[group_a].members) != 2 or old[group_a].protocol_type != "consumer":
        fail_later(f"list_groups: {group_a} has {len(old[group_a].members)} members, protocol "
                   f"type {old[group_a].protocol_type!r}")
    else:
        ok(f"list_groups (old API) shows {group_a}: state {old[group_a].state}, protocol "
           f"{old[group_a].protocol}, {len(old[group_a].members)} members")
except Exception as e:  # noqa: BLE001
    fail_later(f"list_groups failed: {e!r}")

poll_all(0)
try:
    desc = admin.describe_consumer_groups([group_a, group_b], request_timeout=15)
    da = desc[group_a].result(timeout=remaining(20))
    db = desc[group_b].result(timeout=remaining(20))
except Exception as e:  # noqa: BLE001
    fail(f"describe_consumer_groups failed: {e!r}")
if da.state != ConsumerGroupState.STABLE or db.state != ConsumerGroupState.STABLE:
    fail_later(f"describe_consumer_groups: states {da.state}, {db.state}, expected STABLE")
if da.partition_assignor != "range":
    fail_later(f"describe_consumer_groups: {group_a} assignor {da.partition_assignor!r}, "
               f"expected 'range'")
if len(da.members) != 2 or len(db.members) != 1:
    fail(f"describe_consumer_groups: {len(da.members)} members in A (want 2), "
         f"{len(db.members)} in B (want 1)")
clients = sorted(m.client_id for m in da.members)
if clients != ["spate-a1", "spate-a2"]:
    fail_later(f"describe_consumer_groups: group A client ids {clients}")
if len({m.member_id for m in da.members}) != 2 or any(not m.member_id for m in da.members):
    fail_later(f"describe_consumer_groups: member ids {[m.member_id for m in da.members]}")
described = sorted(tp.partition for m in da.members for tp in m.assignment.topic_partitions
                   if tp.topic == topic)
if described != list(range(PARTITIONS)):
    fail_later(f"describe_consumer_groups: group A assignments cover {described}, expected "
               f"every partition once")
by_client = {m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions)
             for m in da.members}
if by_client.get("spate-a1") != sorted(assigned["a1"]):
    fail_later(f"describe_consumer_groups says a1 owns {by_client.get('spate-a1')}, a1 was "
               f"assigned {sorted(assigned['a1'])}")
ok(f"describe_consumer_groups: {group_a} {da.state}, assignor {da.partition_assignor}, members "
   f"{by_client}; {group_b} has 1 member; coordinator {da.coordinator.id}")

# --- DeleteGroups --------------------------------------------------------------------------------
poll_all(0)


def delete(group):
    try:
        admin.delete_consumer_groups([group], request_timeout=15)[group].result(
            timeout=remaining(20))
        return None
    except KafkaException as e:
        return e.args[0]
    except Exception as e:  # noqa: BLE001
        return e


err = delete(group_a)
if err is None:
    fail_later(f"delete_consumer_groups deleted {group_a}, which has two members "
               f"(expected NON_EMPTY_GROUP)")
elif not (isinstance(err, KafkaError) and err.code() == KafkaError.NON_EMPTY_GROUP):
    fail_later(f"delete_consumer_groups({group_a}) with members: {err!r}, expected "
               f"NON_EMPTY_GROUP")
else:
    ok(f"delete_consumer_groups refuses a group with members: {err.name()}")

err = delete(f"{stamp_groups}-no-such-group")
if not (isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_ID_NOT_FOUND):
    fail_later(f"delete_consumer_groups(unknown group): {err!r}, expected GROUP_ID_NOT_FOUND")
else:
    ok("delete_consumer_groups(unknown group) gives GROUP_ID_NOT_FOUND")

members.pop("b1").close()  # group B is now empty (LeaveGroup), its offsets still committed
check = consumer(group_b)
got = committed(check)
check.close()
if got != before:
    fail(f"group B after its member left: committed() = {got}, expected {before}")
ok(f"group B is empty and keeps its committed offsets {got}")
err = delete(group_b)
if err is not None:
    fail(f"delete_consumer_groups({group_b}) on an empty group failed: {err!r}")
result = admin.list_consumer_groups(request_timeout=15).result(timeout=remaining(20))
if group_b in {g.group_id for g in result.valid}:
    fail_later(f"list_consumer_groups still shows {group_b} after delete_consumer_groups")
check = consumer(group_b)
got = committed(check)
check.close()
if got != [OFFSET_INVALID] * PARTITIONS:
    fail(f"after delete_consumer_groups({group_b}), committed() = {got}: the group's offsets "
         f"should be gone")
ok(f"delete_consumer_groups removed the empty {group_b} and its committed offsets")

for c in members.values():
    c.close()
finish("groups_semantics")
