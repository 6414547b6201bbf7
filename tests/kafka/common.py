"""Helpers shared by the Python client scripts in tests/kafka/.

Offers:
  - reporting: ok(), fail() (exit 1; fail_with_os_exit() makes it os._exit, for scripts whose
    client threads could keep the process alive), fail_later() with the `deferred` list, and
    finish(name), which fails on deferred failures or prints "PASS <name>";
  - a time budget: start_budget(seconds) sets the deadline (returned) and a hard SIGALRM timeout
    5 s after it; remaining(cap) is the time left, at most cap, failing once the budget is spent;
  - the environment: bootstrap_from_env() (SPATE_KAFKA, required), STAMP (pid and start time) and
    topic_name(prefix) (SPATE_TOPIC, else prefix-STAMP);
  - confluent-kafka: client_errors and error_cb (an error_cb that collects them),
    confluent_conf(bootstrap), confluent_versions(), create_topic_confluent() and
    produce_sequenced() (records "p<partition>-<seq>" into every partition);
  - kafka-python: create_topic_kafka_python().

Runs under Debian's /usr/bin/python3 (confluent-kafka 1.7) and pip's python3 (confluent-kafka 2.x,
kafka-python 3.x): the client libraries are imported inside the functions that use them, never
at module level.
"""
import os
import signal
import sys
import time

# --- Reporting --------------------------------------------------------------------------------
deferred = []  # failures that do not stop the remaining checks
_exit = sys.exit


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    _exit(1)


def fail_with_os_exit():
    """From now on fail() ends the process with os._exit (threads blocked in a client cannot
    keep it alive)."""
    global _exit
    _exit = os._exit


def fail_later(msg):
    print(f"FAIL (continuing): {msg}", file=sys.stderr, flush=True)
    deferred.append(msg)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def finish(name):
    """Fails if any check failed along the way, else prints "PASS <name>"."""
    if deferred:
        fail(f"{len(deferred)} check(s) failed: " + "; ".join(deferred))
    print(f"PASS {name}", flush=True)


# --- Time budget ------------------------------------------------------------------------------
_budget = {"seconds": None, "deadline": None}


def start_budget(seconds):
    """Starts a budget of `seconds` for remaining() and a hard timeout (SIGALRM) 5 s after it.
    Returns the deadline (time.monotonic())."""
    _budget["seconds"] = seconds
    _budget["deadline"] = time.monotonic() + seconds

    def on_alarm(_sig, _frame):
        fail(f"hard timeout: the script ran for {seconds + 5} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds + 5)
    return _budget["deadline"]


def remaining(cap):
    """Seconds left in the budget, at most `cap`; fails once the budget is spent."""
    left = _budget["deadline"] - time.monotonic()
    if left <= 0:
        fail(f"ran out of time ({_budget['seconds']} s budget)")
    return min(cap, left)


# --- Environment ------------------------------------------------------------------------------
STAMP = f"{os.getpid()}-{int(time.time() * 1000)}"


def bootstrap_from_env():
    return os.environ.get("SPATE_KAFKA") or fail("set SPATE_KAFKA=host:port")


def topic_name(prefix):
    return os.environ.get("SPATE_TOPIC") or f"{prefix}-{STAMP}"


# --- confluent-kafka --------------------------------------------------------------------------
client_errors = []


def error_cb(err):
    # Connection and protocol trouble shows up here; print everything for the report.
    client_errors.append(str(err))
    print(f"client error: {err}", file=sys.stderr, flush=True)


def confluent_conf(bootstrap_servers):
    """The settings every confluent-kafka client here starts from."""
    return {"bootstrap.servers": bootstrap_servers, "error_cb": error_cb,
            "socket.timeout.ms": 10000}


def confluent_versions():
    import confluent_kafka
    return (f"confluent-kafka {confluent_kafka.__version__}, "
            f"librdkafka {confluent_kafka.libversion()[0]}")


def create_topic_confluent(conf, topic, partitions, config=None, replication_factor=1):
    """Creates `topic` through a new AdminClient, which it returns."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient(dict(conf))
    new = NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor,
                   config=config or {})
    try:
        admin.create_topics([new], operation_timeout=10, request_timeout=15)[topic].result(
            timeout=remaining(20))
    except Exception as e:  # noqa: BLE001
        fail(f"create_topics({topic}, {partitions} partitions) failed: {e!r}")
    return admin


def produce_sequenced(producer, topic, next_seq, per_partition, key=None, on_delivery=None):
    """Produces `per_partition` rounds of one record per partition (len(next_seq) partitions):
    value "p<partition>-<seq>" with seq = next_seq[partition], which it advances; key(p, seq)
    names the key if given. Returns the list delivery errors land in (unless on_delivery is
    given): it fills while the caller flushes."""
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    for _ in range(per_partition):
        for p in range(len(next_seq)):
            seq = next_seq[p]
            next_seq[p] += 1
            while True:
                try:
                    producer.produce(topic, value=f"p{p}-{seq}",
                                     key=None if key is None else key(p, seq), partition=p,
                                     on_delivery=on_delivery or report)
                    break
                except BufferError:
                    producer.poll(0.05)
    return errors


# --- kafka-python -----------------------------------------------------------------------------
def create_topic_kafka_python(conf, client_id, topic, partitions):
    """Creates `topic` (replication factor 1) through a new KafkaAdminClient and waits for its
    metadata. Returns the admin client and create_topics' answer."""
    from kafka import KafkaAdminClient
    try:
        admin = KafkaAdminClient(client_id=client_id, **conf)
        result = admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}},
            timeout_ms=10000, wait_for_metadata=True)
    except Exception as e:  # noqa: BLE001
        fail(f"create_topics({topic}, {partitions} partitions) failed: {e!r}")
    return admin, result
