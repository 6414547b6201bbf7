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

Env: SPATE_KAFKA=host:port (required).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    bootstrap_from_env, confluent_conf, fail, finish, ok, remaining, start_budget)

DEADLINE = start_budget(50)
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
    for i in range(records):
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


{"describe": describe, "create": create, "produce": produce, "consume": consume,
 "committed": committed}.get(mode, lambda: fail(f"unknown mode {mode}"))()
finish(f"cluster_clients {mode}")
