"""Topic settings through the admin clients people use, with their effect checked.

confluent-kafka (PyPI, a current librdkafka):
  - CreateTopics with every standard Kafka topic setting Spate honours or takes at its value;
  - IncrementalAlterConfigs: SET then DELETE, with the source DescribeConfigs reports (topic
    override, or the broker's own setting with its broker name as the synonym);
  - the effect without a restart: a smaller segment.bytes rolls segments, then retention.ms=1
    deletes them (the log start moves up); a smaller max.message.bytes refuses a batch that
    was accepted before, with MSG_SIZE_TOO_LARGE;
  - validate_only changes nothing; an unknown setting, a bad value and APPEND on a setting
    that is not a list get INVALID_CONFIG; a static broker setting is refused (INVALID_REQUEST,
    as Kafka refuses one);
  - AlterConfigs (the older form) replaces every override.
kafka-python 3: DescribeConfigs of the topic and of the broker.
confluent-kafka again, dynamic broker settings (KIP-226): this broker's own log.retention.ms,
  shown as the topic's value with its source (2) and as the broker's (not read-only); deleted,
  the static setting shows again; AlterConfigs replaces the broker's whole set; a static
  setting is refused with INVALID_REQUEST, a cluster-wide-only one for one broker with
  INVALID_CONFIG, as Kafka 4.0 refuses them.

The broker runs with log.retention.ms set (so its synonym is STATIC_BROKER_CONFIG) and a short
log.retention.check.interval.ms (so retention acts within the budget).
"""
import sys
import time

from common import (bootstrap_from_env, confluent_conf, create_topic_confluent, fail, finish,
                    ok, remaining, start_budget, topic_name)

SOURCE_TOPIC, SOURCE_DYNAMIC_BROKER, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 1, 2, 4, 5
BROKER_RETENTION_MS = "3600000"  # as the test harness starts the broker


def describe(admin, topic):
    from confluent_kafka.admin import ConfigResource
    resource = ConfigResource("topic", topic)
    return admin.describe_configs([resource])[resource].result(timeout=remaining(15))


def alter(admin, topic, ops, validate_only=False):
    """ops: [(name, value or None, op)]; answers the exception, if any."""
    from confluent_kafka.admin import ConfigEntry, ConfigResource
    entries = [ConfigEntry(name, value, incremental_operation=op) for name, value, op in ops]
    resource = ConfigResource("topic", topic, incremental_configs=entries)
    try:
        admin.incremental_alter_configs([resource], validate_only=validate_only)[resource].result(
            timeout=remaining(15))
        return None
    except Exception as e:  # noqa: BLE001
        return e


def alter_broker(admin, name, ops):
    """IncrementalAlterConfigs of broker resource `name`."""
    from confluent_kafka.admin import ConfigEntry, ConfigResource
    entries = [ConfigEntry(key, value, incremental_operation=op) for key, value, op in ops]
    resource = ConfigResource("broker", name, incremental_configs=entries)
    try:
        admin.incremental_alter_configs([resource])[resource].result(timeout=remaining(15))
        return None
    except Exception as e:  # noqa: BLE001
        return e


def describe_broker(admin, name):
    from confluent_kafka.admin import ConfigResource
    resource = ConfigResource("broker", name)
    return admin.describe_configs([resource])[resource].result(timeout=remaining(15))


def expect_source(admin, topic, value, source, what):
    retention = describe(admin, topic)["retention.ms"]
    if (retention.value, retention.source) != (value, source):
        fail(f"{what}: the topic's retention.ms is {retention.value} from source "
             f"{retention.source}, expected {value} from {source}")


def expect_refused(what, error, code_name):
    if error is None:
        fail(f"{what}: taken, expected {code_name}")
    if code_name not in str(error):
        fail(f"{what}: refused with {error}, expected {code_name}")
    ok(f"{what}: refused with {code_name}")


def low_watermark(conf, topic, partition):
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer(dict(conf, **{"group.id": f"watermarks-{topic}"}))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                   timeout=remaining(10))
    finally:
        consumer.close()
    return low, high


def main():
    start_budget(150)
    from confluent_kafka import Producer
    from confluent_kafka.admin import AlterConfigOpType, ConfigResource

    bootstrap = bootstrap_from_env()
    conf = confluent_conf(bootstrap)
    topic = topic_name("admin-configs")

    # 1. Every standard setting at creation.
    standard = {
        "retention.ms": "604800000", "retention.bytes": "-1", "segment.bytes": "1073741824",
        "segment.ms": "604800000", "max.message.bytes": "1048588", "cleanup.policy": "delete",
        "delete.retention.ms": "86400000", "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false", "compression.type": "producer",
        "message.timestamp.type": "CreateTime",
    }
    admin = create_topic_confluent(conf, topic, 1, config=standard)
    described = describe(admin, topic)
    for name, value in standard.items():
        if name not in described or described[name].value != value:
            fail(f"{name}: described as {described.get(name)}, created with {value}")
    ok(f"created with {len(standard)} standard settings, each described as given")

    # 2. Overrides go; the broker's own setting shows through, with its broker name.
    error = alter(admin, topic, [("retention.ms", None, AlterConfigOpType.DELETE),
                                 ("retention.bytes", None, AlterConfigOpType.DELETE),
                                 ("segment.bytes", "16384", AlterConfigOpType.SET)])
    if error is not None:
        fail(f"IncrementalAlterConfigs: {error}")
    described = describe(admin, topic)
    retention = described["retention.ms"]
    if retention.value != BROKER_RETENTION_MS or retention.source != SOURCE_STATIC_BROKER:
        fail(f"retention.ms without its override: {retention.value} from source "
             f"{retention.source}, expected {BROKER_RETENTION_MS} from {SOURCE_STATIC_BROKER}")
    # (confluent-kafka keeps synonyms by name: of the broker's two levels, one shows.)
    synonyms = [s.name for s in retention.synonyms.values()]
    if "log.retention.ms" not in synonyms:
        fail(f"retention.ms synonyms {synonyms}: the broker's log.retention.ms is missing")
    segment = described["segment.bytes"]
    if segment.value != "16384" or segment.source != SOURCE_TOPIC:
        fail(f"segment.bytes described as {segment.value} from {segment.source}")
    if described["retention.bytes"].source != SOURCE_DEFAULT:
        fail(f"retention.bytes: source {described['retention.bytes'].source}, expected default")
    ok("DELETE and SET taken; sources: topic override, static broker setting, default")

    # 3. The smaller segment.bytes applies to the next writes: segments roll.
    producer = Producer(dict(conf, **{"linger.ms": 0, "batch.num.messages": 1}))
    delivered = []
    for i in range(200):
        producer.produce(topic, value=b"v" * 400, partition=0,
                         on_delivery=lambda err, _m: delivered.append(err))
        producer.poll(0)
    producer.flush(remaining(20))
    if len(delivered) != 200 or any(e is not None for e in delivered):
        fail(f"produce: {[e for e in delivered if e is not None][:3]} of {len(delivered)}")
    low, high = low_watermark(conf, topic, 0)
    if (low, high) != (0, 200):
        fail(f"after 200 records: watermarks {(low, high)}")
    ok("200 records of 400 bytes written with segment.bytes=16384")

    # 4. A tighter retention deletes the sealed segments at the next check, no restart.
    error = alter(admin, topic, [("retention.ms", "1", AlterConfigOpType.SET)])
    if error is not None:
        fail(f"retention.ms=1: {error}")
    while True:
        low, high = low_watermark(conf, topic, 0)
        if low > 0:
            break
        time.sleep(0.2)
        remaining(60)
    if high != 200 or low >= high:
        fail(f"retention left watermarks {(low, high)}")
    ok(f"retention.ms=1 deleted the sealed segments: the log starts at {low} of {high}")

    # 5. A smaller max.message.bytes refuses what was taken before.
    if alter(admin, topic, [("retention.ms", "604800000", AlterConfigOpType.SET),
                            ("max.message.bytes", "1024", AlterConfigOpType.SET)]) is not None:
        fail("max.message.bytes=1024 refused")
    refused = []
    producer.produce(topic, value=b"x" * 4000, partition=0,
                     on_delivery=lambda err, _m: refused.append(err))
    producer.flush(remaining(20))
    if not refused or refused[0] is None or "MSG_SIZE_TOO_LARGE" not in str(refused[0]):
        fail(f"a 4000-byte record under max.message.bytes=1024: {refused}")
    ok("max.message.bytes=1024 refuses a 4000-byte record with MSG_SIZE_TOO_LARGE")

    # 6. validate_only, and what is refused.
    before = {k: v.value for k, v in describe(admin, topic).items()}
    if alter(admin, topic, [("retention.ms", "5", AlterConfigOpType.SET)],
             validate_only=True) is not None:
        fail("a valid change with validate_only refused")
    after = {k: v.value for k, v in describe(admin, topic).items()}
    if before != after:
        fail(f"validate_only changed the topic: {before} -> {after}")
    ok("validate_only checks without changing")
    expect_refused("an unknown setting",
                   alter(admin, topic, [("no.such.setting", "1", AlterConfigOpType.SET)]),
                   "INVALID_CONFIG")
    expect_refused("a bad value", alter(admin, topic, [("retention.ms", "soon",
                                                        AlterConfigOpType.SET)]),
                   "INVALID_CONFIG")
    expect_refused("APPEND to a single value",
                   alter(admin, topic, [("retention.ms", "5", AlterConfigOpType.APPEND)]),
                   "INVALID_CONFIG")
    expect_refused("a codec Kafka does not have",
                   alter(admin, topic, [("compression.type", "brotli", AlterConfigOpType.SET)]),
                   "INVALID_CONFIG")
    # Kafka's answer to a setting that cannot change at runtime.
    expect_refused("a static broker setting",
                   alter_broker(admin, "0", [("num.partitions", "4", AlterConfigOpType.SET)]),
                   "INVALID_REQUEST")

    # 7. AlterConfigs replaces every override.
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    resource = ConfigResource("topic", topic, set_config={"retention.bytes": "1000000"})
    admin.alter_configs([resource])[resource].result(timeout=remaining(15))
    overrides = {k: v.value for k, v in describe(admin, topic).items() if v.source == SOURCE_TOPIC}
    if overrides != {"retention.bytes": "1000000"}:
        fail(f"after AlterConfigs the overrides are {overrides}")
    ok("AlterConfigs replaced every override")

    # 8. kafka-python describes the topic and the broker.
    from kafka.admin import ConfigResource as KafkaPythonResource, ConfigResourceType, \
        KafkaAdminClient
    client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    try:
        # Every setting, not only those set ("modified", its default filter).
        answers = client.describe_configs([
            KafkaPythonResource(ConfigResourceType.TOPIC, topic),
            KafkaPythonResource(ConfigResourceType.BROKER, "0")], config_filter="all")
    finally:
        client.close()
    described = {name: {key: entry["value"] for key, entry in entries.items()}
                 for by_name in answers.values() for name, entries in by_name.items()}
    if described.get(topic, {}).get("retention.bytes") != "1000000":
        fail(f"kafka-python: topic described as {described.get(topic)}")
    if described.get("0", {}).get("log.retention.ms") != BROKER_RETENTION_MS:
        fail(f"kafka-python: broker described as {described.get('0')}")
    ok("kafka-python describes the topic's and the broker's settings")

    # 9. Dynamic broker settings of this broker (confluent-kafka, like kafka-python, takes only
    #    a numbered broker resource: the cluster-wide "" is tested over the wire, in
    #    tests/cluster.rs). The topic has no retention.ms of its own (step 7).
    set_op, delete_op = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    error = alter_broker(admin, "0", [("log.retention.ms", "1800000", set_op),
                                      ("log.roll.ms", "3600000", set_op)])
    if error is not None:
        fail(f"broker 0's log.retention.ms: {error}")
    expect_source(admin, topic, "1800000", SOURCE_DYNAMIC_BROKER, "broker 0's own")
    broker = describe_broker(admin, "0")
    own = broker["log.retention.ms"]
    if (own.value, own.source, own.is_read_only) != ("1800000", SOURCE_DYNAMIC_BROKER, False):
        fail(f"broker 0's log.retention.ms described as {own}")
    if not broker["num.partitions"].is_read_only:
        fail("num.partitions described as dynamic")
    ok("log.retention.ms set for broker 0: the topic's retention.ms from source 2, "
       "the broker's setting dynamic")
    error = alter_broker(admin, "0", [("log.retention.ms", None, delete_op)])
    if error is not None:
        fail(f"deleting broker 0's log.retention.ms: {error}")
    expect_source(admin, topic, BROKER_RETENTION_MS, SOURCE_STATIC_BROKER, "deleted")
    resource = ConfigResource("broker", "0", set_config={"log.segment.bytes": "1048576"})
    admin.alter_configs([resource])[resource].result(timeout=remaining(15))
    roll = describe(admin, topic)["segment.ms"]
    segment = describe(admin, topic)["segment.bytes"]
    if (segment.value, segment.source) != ("1048576", SOURCE_DYNAMIC_BROKER):
        fail(f"segment.bytes after AlterConfigs of broker 0: {segment}")
    if roll.source != SOURCE_DEFAULT:
        fail(f"segment.ms after AlterConfigs of broker 0 (log.roll.ms not named): {roll}")
    ok("deleted, the static setting shows again; AlterConfigs replaced broker 0's whole set")
    expect_refused("min.insync.replicas for one broker",
                   alter_broker(admin, "0", [("min.insync.replicas", "1", set_op)]),
                   "INVALID_CONFIG")
    expect_refused("log.retention.hours (read-only in Kafka too)",
                   alter_broker(admin, "0", [("log.retention.hours", "1", set_op)]),
                   "INVALID_REQUEST")
    finish("admin_configs")


if __name__ == "__main__":
    sys.exit(main())
