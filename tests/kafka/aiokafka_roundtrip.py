"""aiokafka (asyncio, its own protocol code): what an asyncio service does with Kafka.

  - AIOKafkaAdminClient creates the topic (3 partitions) and describes its settings;
  - an idempotent AIOKafkaProducer (acks=all) sends keyed records with headers and explicit
    timestamps, each send awaited for its offset;
  - an AIOKafkaConsumer in a consumer group reads every record back (keys, values, headers,
    timestamps and offsets as produced), commits, and a second consumer of the group starts
    from the committed offsets (it reads nothing new).
"""
import asyncio
import time

from common import (bootstrap_from_env, fail, finish, ok, remaining, start_budget, topic_name)

COUNT = 300
PARTITIONS = 3


async def main():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    bootstrap = bootstrap_from_env()
    topic = topic_name("aiokafka")
    group = f"{topic}-readers"

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        names = {entry[0] for response in described for result in response.resources
                 for entry in result[4]}
        if "retention.ms" not in names:
            fail(f"describe_configs({topic}) lacks retention.ms: {sorted(names)[:10]}")
    finally:
        await admin.close()
    ok(f"admin: created {topic} ({PARTITIONS} partitions) and described its settings")

    base_ts = int(time.time() * 1000) - 60_000
    sent = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for i in range(COUNT):
            key, value = f"k{i % 17}".encode(), f"value-{i}".encode()
            headers = [("seq", str(i).encode())]
            meta = await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key, headers=headers,
                                       timestamp_ms=base_ts + i),
                timeout=remaining(20))
            sent[(meta.partition, meta.offset)] = (key, value, headers, base_ts + i)
    finally:
        await producer.stop()
    if len(sent) != COUNT:
        fail(f"{len(sent)} distinct (partition, offset) pairs for {COUNT} sends")
    ok(f"idempotent producer: {COUNT} keyed records with headers, each acknowledged at an offset")

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got = {}
    try:
        while len(got) < COUNT and remaining(40) > 0:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    got[(r.partition, r.offset)] = (r.key, r.value, list(r.headers), r.timestamp)
        await consumer.commit()
    finally:
        await consumer.stop()
    if got != sent:
        missing = sorted(set(sent) - set(got))[:5]
        wrong = [k for k in sent if k in got and got[k] != sent[k]][:5]
        fail(f"group read {len(got)} of {COUNT}: missing {missing}, different {wrong}")
    ok(f"group consumer read all {COUNT} records as sent and committed its offsets")

    again = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    await again.start()
    try:
        extra = await again.getmany(timeout_ms=3000)
        count = sum(len(records) for records in extra.values())
        if count:
            fail(f"a new member of {group} read {count} records past the committed offsets")
    finally:
        await again.stop()
    ok("a new member of the group starts at the committed offsets")
    finish("aiokafka_roundtrip")


if __name__ == "__main__":
    start_budget(90)
    asyncio.run(main())
