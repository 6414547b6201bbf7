#!/usr/bin/env python3
"""Unchanged Kafka clients against a Spate cluster, through one broker (the bootstrap).

Modes (argv[1]):
  describe  prints one JSON line per client, as each sees the cluster: confluent-kafka's
            list_topics (Metadata) and kafka-python's describe_topics: brokers, and for every
            topic its partitions' leader, replicas and in-sync replicas. The test compares the
            lines of every broker.
  create    creates SPATE_TOPIC with SPATE_PARTITIONS partitions and SPATE_REPLICAS replicas
            through confluent-kafka's AdminClient (the broker forwards it to the controller).
  produce   produces SPATE_RECORDS keyed records to SPATE_TOPIC with an idempotent acks=all
            confluent-kafka producer (records go to each partition's leader, wherever it is);
            every delivery must succeed. Prints the count per partition.
  consume   reads SPATE_TOPIC from the start as kafka-python consumer group SPATE_GROUP
            (its coordinator found through the bootstrap), checks every record it produced is
            there once, commits, and prints the count per partition and the committed offsets.
  committed prints SPATE_GROUP's committed offsets on SPATE_TOPIC (kafka-python).
  members   three confluent-kafka members of SPATE_GROUP read SPATE_TOPIC until they have seen
            every record v0..v<SPATE_RECORDS - 1> (the harness produces some while they read),
            slowly (SPATE_BATCH_PAUSE s after each batch) and committing each batch
            synchronously. Prints {"seen": n} as they go (the harness acts on it), then the
            highest commit the coordinator acknowledged per partition, and how many commits
            were refused. Fails when a record seen was never produced, or when a member's
            first record of a partition assigned to it lies below a commit acknowledged before
            the assignment (a committed offset lost: the group read again from further back).
  elect     asks for a preferred leader election (confluent-kafka's elect_leaders, KIP-460) of
            partitions SPATE_PARTITIONS (comma-separated) of SPATE_TOPIC; prints each
            partition's outcome: null, or the error's name.
  reassign  moves partitions of SPATE_TOPIC as SPATE_MOVES says (JSON: partition -> broker ids,
            or null to cancel its move) with kafka-python's alter_partition_reassignments
            (KIP-455); prints each partition's outcome: null, or the error's name.
  reassignments
            prints the moves of SPATE_TOPIC in progress, with kafka-python's
            list_partition_reassignments: partition -> [replicas, adding, removing].
  produce takes SPATE_FIRST (default 0): the first record's number.

Env: SPATE_KAFKA=host:port[,host:port...] (required); SPATE_BUDGET: seconds (default 50).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    bootstrap_from_env, confluent_conf, fail, finish, ok, remaining, start_budget)

DEADLINE = start_budget(int(os.environ.get("SPATE_BUDGET", "50")))
bootstrap = bootstrap_from_env()
mode = sys.argv[1] if len(sys.argv) > 1 else fail("a mode: describe, create, produce, consume")
topic = os.environ.get("SPATE_TOPIC", "")
group = os.environ.get("SPATE_GROUP", "cluster-clients")
records = int(os.environ.get("SPATE_RECORDS", "300"))


def describe():
    from confluent_kafka.admin import AdminClient
    from kafka.admin import KafkaAdminClient
    admin = AdminClient(confluent_conf(bootstrap))
    metadata = admin.list_topics(timeout=remaining(20))
    topics = {}
    for name, t in metadata.topics.items():
        if t.error is not None:
            fail(f"confluent-kafka: {name}: {t.error}")
        topics[name] = sorted([p.id, p.leader, list(p.replicas), list(p.isrs)]
                              for p in t.partitions.values())
    print(json.dumps({
        "client": "confluent-kafka",
        "brokers": sorted([b.id, b.host, b.port] for b in metadata.brokers.values()),
        "topics": topics,
    }, sort_keys=True))
    client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    described = client.describe_topics()
    client.close()
    topics = {}
    for t in described:
        name = t.get("name", t.get("topic"))
        if t["error_code"] != 0:
            fail(f"kafka-python: {name}: error {t['error_code']}")
        topics[name] = sorted(
            [p.get("partition_index", p.get("partition")), p.get("leader_id", p.get("leader")),
             list(p.get("replica_nodes", p.get("replicas"))), list(p.get("isr_nodes", p.get("isr")))]
            for p in t["partitions"])
    print(json.dumps({"client": "kafka-python", "topics": topics}, sort_keys=True))


def create():
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient(confluent_conf(bootstrap))
    new = NewTopic(topic, num_partitions=int(os.environ["SPATE_PARTITIONS"]),
                   replication_factor=int(os.environ["SPATE_REPLICAS"]))
    try:
        admin.create_topics([new], operation_timeout=10, request_timeout=15)[topic].result(
            timeout=remaining(20))
    except Exception as e:  # noqa: BLE001
        fail(f"create_topics({topic}) failed: {e!r}")
    ok(f"created {topic}")


def produce():
    from confluent_kafka import Producer
    failures, per_partition = [], {}

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            per_partition[msg.partition()] = per_partition.get(msg.partition(), 0) + 1

    conf = dict(confluent_conf(bootstrap), **{"acks": "all", "enable.idempotence": True,
                                             "linger.ms": 5})
    producer = Producer(conf)
    first = int(os.environ.get("SPATE_FIRST", "0"))
    for i in range(first, first + records):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(remaining(30))
    if left or failures:
        fail(f"{left} undelivered, failures {failures[:5]}")
    print(json.dumps({"produced": {str(p): n for p, n in sorted(per_partition.items())}}))


def consume():
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             request_timeout_ms=20000)
    seen, per_partition = set(), {}
    while len(seen) < records:
        batch = consumer.poll(timeout_ms=int(remaining(30) * 1000))
        for tp, messages in batch.items():
            for m in messages:
                value = m.value.decode()
                if value in seen:
                    fail(f"{value} read twice")
                if m.key.decode() != "k" + value[1:]:
                    fail(f"key {m.key!r} with value {value}")
                seen.add(value)
                per_partition[tp.partition] = per_partition.get(tp.partition, 0) + 1
    consumer.commit()
    committed = {str(tp.partition): consumer.committed(tp) for tp in consumer.assignment()}
    consumer.close()
    print(json.dumps({"consumed": {str(p): n for p, n in sorted(per_partition.items())},
                      "committed": dict(sorted(committed.items()))}))


def committed():
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, request_timeout_ms=20000)
    partitions = consumer.partitions_for_topic(topic) or set()
    offsets = {str(p): consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    consumer.close()
    print(json.dumps({"committed": offsets}))


def members():
    import threading
    import time
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    pause = float(os.environ.get("SPATE_BATCH_PAUSE", "0.05"))
    lock = threading.Lock()
    seen, acked, refused, strays, lost = set(), {}, [], [], []
    # (member, partition) -> the highest acknowledged commit when the partition was assigned,
    # until the member's first record of it.
    floors = {}
    done = threading.Event()

    def member(index):
        conf = dict(confluent_conf(bootstrap), **{
            "group.id": group, "client.id": f"member-{index}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500})
        consumer = Consumer(conf)

        def assigned(_consumer, partitions):
            with lock:
                for tp in partitions:
                    floors[(index, tp.partition)] = acked.get(tp.partition, 0)

        def revoked(_consumer, partitions):
            with lock:
                for tp in partitions:
                    floors.pop((index, tp.partition), None)

        consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked)
        while not done.is_set() and time.monotonic() < DEADLINE:
            batch = consumer.consume(num_messages=20, timeout=0.5)
            ends, values = {}, []
            for m in batch:
                if m.error() is not None:
                    continue
                values.append(m.value().decode())
                ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
                with lock:
                    floor = floors.pop((index, m.partition()), None)
                    if floor is not None and m.offset() < floor:
                        lost.append((m.partition(), m.offset(), floor))
            if not ends:
                continue
            with lock:
                for value in values:
                    if not value.startswith("v") or not 0 <= int(value[1:]) < records:
                        strays.append(value)
                seen.update(values)
                print(json.dumps({"seen": len(seen)}), flush=True)
                if len(seen) >= records:
                    done.set()
            try:
                offsets = [TopicPartition(topic, p, end) for p, end in ends.items()]
                for tp in consumer.commit(offsets=offsets, asynchronous=False):
                    if tp.error is None:
                        with lock:
                            acked[tp.partition] = max(acked.get(tp.partition, 0), tp.offset)
            except KafkaException as e:
                with lock:
                    refused.append(str(e))
            time.sleep(pause)
        consumer.close()

    threads = [threading.Thread(target=member, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, DEADLINE - time.monotonic()) + 5)
    if strays:
        fail(f"read records never produced: {strays[:5]}")
    if lost:
        fail(f"(partition, first offset read, commit acknowledged before): {lost[:5]}")
    if len(seen) < records:
        missing = sorted(set(f"v{i}" for i in range(records)) - seen)
        fail(f"saw {len(seen)} of {records} records; missing e.g. {missing[:5]}")
    print(json.dumps({"acked": {str(p): o for p, o in sorted(acked.items())},
                      "refused": len(refused), "refusals": sorted(set(refused))[:5]}), flush=True)


def elect():
    from confluent_kafka import ElectionType, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient
    admin = AdminClient(confluent_conf(bootstrap))
    partitions = [TopicPartition(topic, int(p)) for p in os.environ["SPATE_PARTITIONS"].split(",")]
    try:
        outcome = admin.elect_leaders(ElectionType.PREFERRED, partitions).result(
            timeout=remaining(20))
    except KafkaException as e:
        fail(f"elect_leaders failed: {e!r}")
    results = {}
    for tp, error in outcome.items():
        # A KafkaException wrapping a KafkaError, or the KafkaError itself.
        if error is not None and not hasattr(error, "name"):
            error = error.args[0]
        results[str(tp.partition)] = None if error is None else error.name()
    print(json.dumps({"elected": dict(sorted(results.items()))}))


def reassign():
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient
    moves = json.loads(os.environ["SPATE_MOVES"])
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    outcome = admin.alter_partition_reassignments(
        {TopicPartition(topic, int(p)): replicas for p, replicas in moves.items()})
    admin.close()
    results = {str(tp.partition): None if error is None else error.__name__
               for tp, error in outcome.items()}
    print(json.dumps({"reassigned": dict(sorted(results.items()))}))


def reassignments():
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    ongoing = admin.list_partition_reassignments()
    admin.close()
    print(json.dumps({"ongoing": {
        str(tp.partition): [m["replicas"], m["adding_replicas"], m["removing_replicas"]]
        for tp, m in sorted(ongoing.items()) if tp.topic == topic}}))


{"describe": describe, "create": create, "produce": produce, "consume": consume,
 "committed": committed, "members": members, "elect": elect, "reassign": reassign,
 "reassignments": reassignments}.get(mode, lambda: fail(f"unknown mode {mode}"))()
finish(f"cluster_clients {mode}")
