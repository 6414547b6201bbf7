#!/usr/bin/env python3
"""What a Kafka admin client sees of the cluster through one broker.

Asks DescribeCluster with confluent-kafka's AdminClient (librdkafka) and kafka-python's
KafkaAdminClient, and prints one JSON line per client: the cluster id, the controller id and the
brokers (id, host, port, rack), sorted. The test compares these lines across every broker.

Env: SPATE_KAFKA=host:port (required).
"""
import json
import os
import sys

from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

bootstrap = os.environ["SPATE_KAFKA"]

admin = AdminClient({"bootstrap.servers": bootstrap})
described = admin.describe_cluster(request_timeout=20).result(timeout=30)
print(json.dumps({
    "client": "confluent-kafka",
    "cluster_id": described.cluster_id,
    "controller": described.controller.id if described.controller else None,
    "brokers": sorted([n.id, n.host, n.port, n.rack] for n in described.nodes),
}))

client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
described = client.describe_cluster()
client.close()
print(json.dumps({
    "client": "kafka-python",
    "cluster_id": described["cluster_id"],
    "controller": described["controller_id"],
    "brokers": sorted([b["broker_id"], b["host"], b["port"], b["rack"]] for b in described["brokers"]),
}))
sys.exit(0)
