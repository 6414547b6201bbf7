"""The admin APIs operators call besides settings, through the clients that ship them.

confluent-kafka (PyPI): ListOffsets by max timestamp (KIP-734), earliest and latest, on records
whose timestamps are out of order.
confluent-kafka: DeleteRecords, then a consumer asking for offset 0 starts at the new log start
(the broker answers OFFSET_OUT_OF_RANGE below it).
kafka-python 3:
  - DescribeLogDirs: the broker's data directory, with the topic's partition and its size
    (larger after more records);
  - DescribeProducers: the idempotent producer that wrote, with its epoch and last sequence;
  - OffsetDelete: a group's offsets of a topic it no longer consumes go (and OffsetFetch shows
    none); while a member consumes the topic, GROUP_SUBSCRIBED_TO_TOPIC; for no such group,
    GROUP_ID_NOT_FOUND.
"""
import sys
import time

from common import (bootstrap_from_env, confluent_conf, create_topic_confluent, fail, finish,
                    ok, remaining, start_budget, topic_name)


def produce_with_timestamps(conf, topic, stamps, idempotent=False):
    from confluent_kafka import Producer
    settings = {"linger.ms": 0, "enable.idempotence": idempotent}
    producer = Producer(dict(conf, **settings))
    delivered = []
    for i, stamp in enumerate(stamps):
        producer.produce(topic, value=f"r{i}".encode(), partition=0, timestamp=stamp,
                         on_delivery=lambda err, _m: delivered.append(err))
        producer.poll(0)
    producer.flush(remaining(20))
    errors = [e for e in delivered if e is not None]
    if len(delivered) != len(stamps) or errors:
        fail(f"produce: {errors[:3]} of {len(delivered)} deliveries")


def main():
    start_budget(120)
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    bootstrap = bootstrap_from_env()
    conf = confluent_conf(bootstrap)
    topic = topic_name("admin-apis")
    admin = create_topic_confluent(conf, topic, 1)

    # 1. ListOffsets: the largest timestamp is the third record's, not the last one's.
    base = int(time.time() * 1000) - 60_000
    stamps = [base + 10, base + 30, base + 50, base + 20, base + 40]
    produce_with_timestamps(conf, topic, stamps, idempotent=True)
    partition = TopicPartition(topic, 0)
    asked = {"max": OffsetSpec.max_timestamp(), "earliest": OffsetSpec.earliest(),
             "latest": OffsetSpec.latest()}
    answers = {}
    for name, spec in asked.items():
        futures = admin.list_offsets({partition: spec}, request_timeout=15)
        answers[name] = futures[partition].result(timeout=remaining(15))
    if (answers["max"].offset, answers["max"].timestamp) != (2, base + 50):
        fail(f"max timestamp: offset {answers['max'].offset} at {answers['max'].timestamp}, "
             f"expected 2 at {base + 50}")
    if (answers["earliest"].offset, answers["latest"].offset) != (0, 5):
        fail(f"earliest {answers['earliest'].offset}, latest {answers['latest'].offset}")
    ok("ListOffsets: max timestamp at offset 2 (of 5, out of order), earliest 0, latest 5")

    # 2. DeleteRecords below offset 3: the low watermark moves; reading from 0 starts at 3.
    from confluent_kafka import Consumer
    deleted = admin.delete_records([TopicPartition(topic, 0, 3)], request_timeout=15)
    low = list(deleted.values())[0].result(timeout=remaining(15)).low_watermark
    if low != 3:
        fail(f"DeleteRecords below 3: low watermark {low}")
    consumer = Consumer(dict(conf, **{"group.id": f"{topic}-reader",
                                      "auto.offset.reset": "earliest"}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    first = None
    deadline = time.monotonic() + remaining(20)
    while first is None and time.monotonic() < deadline:
        message = consumer.poll(1)
        if message is not None and message.error() is None:
            first = message.offset()
    consumer.close()
    if first != 3:
        fail(f"a read from offset 0 after DeleteRecords below 3 started at {first}")
    ok("DeleteRecords below 3: low watermark 3, and a read from 0 starts at 3")

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaPythonPartition
    from kafka.admin import KafkaAdminClient
    client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    kp_partition = KafkaPythonPartition(topic, 0)

    # 3. DescribeLogDirs: the partition, with its size, growing with more records.
    def partition_size():
        described = client.describe_log_dirs(topic_partitions={topic: [0]})
        sizes = []
        for broker in described:
            for log_dir in broker.get("log_dirs", []):
                for described_topic in log_dir.get("topics", []):
                    if described_topic.get("name") != topic:
                        continue
                    for p in described_topic.get("partitions", []):
                        if p.get("partition_index") == 0:
                            sizes.append(p.get("partition_size"))
        if len(sizes) != 1:
            fail(f"DescribeLogDirs: {described}")
        return sizes[0]

    before = partition_size()
    produce_with_timestamps(conf, topic, [base + 60] * 20)
    after = partition_size()
    if not (0 < before < after):
        fail(f"DescribeLogDirs sizes {before} then {after}")
    ok(f"DescribeLogDirs: {topic}-0 takes {before} bytes, then {after} after 20 more records")

    # 4. DescribeProducers: the idempotent producer of step 1, sequences 0 to 4.
    described = client.describe_producers([kp_partition])
    state = described.get(kp_partition)
    producers = getattr(state, "active_producers", None) or []
    if len(producers) != 1:
        fail(f"DescribeProducers: {described}")
    producer = producers[0]
    last_sequence = getattr(producer, "last_sequence", None)
    if last_sequence != 4 or getattr(producer, "producer_id", -1) < 0:
        fail(f"DescribeProducers: {producer}")
    ok(f"DescribeProducers: producer {producer.producer_id}, last sequence 4")

    # 5. OffsetDelete.
    group = f"{topic}-group"
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    read = 0
    deadline = time.monotonic() + remaining(30)
    while read < 25 and time.monotonic() < deadline:
        for _ in consumer.poll(timeout_ms=1000).values():
            read = consumer.position(kp_partition)
    consumer.commit()
    def committed_offsets():
        # kafka-python 3 answers {group: {partition: OffsetAndMetadata}}.
        answered = client.list_group_offsets(group)
        return answered.get(group, answered)

    committed = committed_offsets()
    if committed.get(kp_partition) is None or committed[kp_partition].offset != 25:
        fail(f"committed before the delete: {committed}")
    refused = client.delete_group_offsets(group, [kp_partition])
    if refused.get(kp_partition).__name__ != "GroupSubscribedToTopicError":
        fail(f"OffsetDelete while subscribed: {refused}")
    ok("OffsetDelete while a member consumes the topic: GROUP_SUBSCRIBED_TO_TOPIC")
    consumer.close()
    deleted = client.delete_group_offsets(group, [kp_partition])
    if deleted.get(kp_partition).__name__ != "NoError":
        fail(f"OffsetDelete of an empty group: {deleted}")
    committed = committed_offsets()
    if committed.get(kp_partition) is not None and committed[kp_partition].offset >= 0:
        fail(f"offsets after the delete: {committed}")
    ok("OffsetDelete of the group once empty: its offset is gone")
    try:
        client.delete_group_offsets(f"{group}-none", [kp_partition])
        fail("OffsetDelete of no group answered")
    except Exception as e:  # noqa: BLE001
        if "GroupIdNotFound" not in type(e).__name__ and "GROUP_ID_NOT_FOUND" not in str(e):
            fail(f"OffsetDelete of no group: {e!r}")
    ok("OffsetDelete of no such group: GROUP_ID_NOT_FOUND")
    client.close()
    finish("admin_apis")


if __name__ == "__main__":
    sys.exit(main())
