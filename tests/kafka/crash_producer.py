"""Idempotent acks=all producer for the kill -9 harnesses (tests/kafka_crash.rs, and the cluster's
fault run in tests/cluster.rs), then a verifier.

Produce phase: sequenced records "p<partition>-<seq>" into every partition of the topic, at a
bounded rate, with enable.idempotence (acks=all, retries without limit). The broker is killed
with -9 and restarted underneath it many times; the client retries what was in flight. Delivery
reports are kept: (partition, seq) -> offset. The phase ends when the file SPATE_STOP_FILE
appears; everything still in flight is flushed. SPATE_CLIENT picks the producer: confluent-kafka
(librdkafka; the default) or kafka-python (pure Python, at a tenth of the rate).

Verify phase: every partition is read back from the beginning, and checked:
  - every acknowledged record is present exactly once, at the offset its acknowledgement gave,
    with its bytes intact;
  - sequences in each partition strictly increase: nothing duplicated, nothing reordered
    (idempotence across restarts: a retried batch must not be stored twice);
  - a record stored but never acknowledged (in flight when the producer gave up) may exist, but
    only in sequence order.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (confluent_conf, confluent_versions, create_topic_confluent, fail,  # noqa: E402
                    bootstrap_from_env, ok, remaining, start_budget, topic_name)

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

PARTITIONS = int(os.environ.get("SPATE_PARTITIONS", "6"))
# A cluster's fault run (tests/cluster.rs) replicates the topic.
REPLICAS = int(os.environ.get("SPATE_REPLICAS", "1"))
CLIENT = os.environ.get("SPATE_CLIENT", "confluent-kafka")
# Records per second, all partitions together.
RATE = 20000 if CLIENT == "confluent-kafka" else 2000

# The harness sets the budget from its cycle count (the long form runs hundreds).
BUDGET = int(os.environ.get("SPATE_CRASH_BUDGET_SECS", "170"))
start_budget(BUDGET)
bootstrap = bootstrap_from_env()
topic = topic_name("crash")
stop_file = os.environ.get("SPATE_STOP_FILE") or fail("set SPATE_STOP_FILE")
conf = confluent_conf(bootstrap)
print(f"{confluent_versions()}, producing with {CLIENT}, bootstrap {bootstrap}, topic {topic}",
      flush=True)
create_topic_confluent(conf, topic, PARTITIONS, replication_factor=REPLICAS)
acked = {}  # (partition, seq) -> offset
failed = []


class Confluent:
    """librdkafka's idempotent producer."""

    def __init__(self):
        # Connection errors while a broker is down are expected here, not failures.
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 150000,
            "reconnect.backoff.max.ms": 200,
            "socket.timeout.ms": 10000,
        })

    def send(self, p, seq):
        def delivered(err, msg):
            if err is not None:
                failed.append(f"p{p}-{seq}: {err}")
            else:
                acked[(p, seq)] = msg.offset()
        while True:
            try:
                self.producer.produce(topic, value=f"p{p}-{seq}".encode(), partition=p,
                                      on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def poll(self):
        self.producer.poll(0)

    def flush(self, timeout):
        return self.producer.flush(timeout)


class KafkaPython:
    """kafka-python's idempotent producer (its own retries, sequence numbers and epochs)."""

    def __init__(self):
        from kafka import KafkaProducer
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), acks="all", enable_idempotence=True,
            linger_ms=5, delivery_timeout_ms=150000, request_timeout_ms=10000,
            reconnect_backoff_max_ms=200, max_block_ms=150000)
        self.pending = 0

    def send(self, p, seq):
        def delivered(metadata):
            acked[(p, seq)] = metadata.offset

        def refused(error):
            failed.append(f"p{p}-{seq}: {error!r}")
        future = self.producer.send(topic, value=f"p{p}-{seq}".encode(), partition=p)
        future.add_callback(delivered)
        future.add_errback(refused)

    def poll(self):
        pass

    def flush(self, timeout):
        self.producer.flush(timeout)
        sent = sum(next_seq)
        return sent - len(acked) - len(failed)


producer = Confluent() if CLIENT == "confluent-kafka" else KafkaPython()
next_seq = [0] * PARTITIONS
started = time.monotonic()
sent = 0
while not os.path.exists(stop_file):
    remaining(BUDGET)
    # Hold the rate: a burst of one record per partition, then wait for the schedule.
    for p in range(PARTITIONS):
        producer.send(p, next_seq[p])
        next_seq[p] += 1
        sent += 1
    producer.poll()
    ahead = sent / RATE - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)
left = producer.flush(remaining(120))
if left:
    fail(f"{left} records still in flight after the flush")
if failed:
    fail(f"{len(failed)} records failed for good (idempotent retries should succeed): {failed[:5]}")
ok(f"produced {sent} records over {time.monotonic() - started:.1f} s; all {len(acked)} acknowledged")

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}",
                     "enable.auto.commit": False, "enable.partition.eof": True})
consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
stored = {p: [] for p in range(PARTITIONS)}  # (offset, seq)
at_end = set()
while len(at_end) < PARTITIONS:
    remaining(BUDGET)
    for msg in consumer.consume(10000, 1.0):
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
                continue
            fail(f"consume: {msg.error()}")
        value = msg.value()
        p, seq = msg.partition(), int(value.split(b"-")[1])
        if value != f"p{p}-{seq}".encode() or not value.startswith(f"p{p}-".encode()):
            fail(f"partition {p} offset {msg.offset()}: bytes {value!r} are not the record's")
        stored[p].append((msg.offset(), seq))
consumer.close()

total = 0
for p in range(PARTITIONS):
    seqs = [seq for _, seq in stored[p]]
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i - 1]:
            fail(f"partition {p}: seq {seqs[i]} at offset {stored[p][i][0]} after {seqs[i - 1]}"
                 " (duplicated or reordered)")
    where = {seq: offset for offset, seq in stored[p]}
    for seq in range(next_seq[p]):
        offset = acked.get((p, seq))
        if offset is None:
            continue
        if where.get(seq) != offset:
            fail(f"partition {p}: acknowledged seq {seq} at offset {offset} is "
                 f"{'missing' if seq not in where else f'at offset {where[seq]}'}")
    total += len(seqs)
ok(f"every acknowledged record is stored once, in order, at its acknowledged offset "
   f"({total} records in {PARTITIONS} partitions)")
print("PASS crash_producer", flush=True)
