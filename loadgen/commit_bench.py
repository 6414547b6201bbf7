"""Offset-commit throughput through the Kafka listener: synchronous confluent-kafka commits,
each of which the coordinator fdatasyncs before answering. Runs 1 committer, then N in N groups,
for SECONDS each, and prints commits/s.

    python3 loadgen/commit_bench.py 127.0.0.1:9092 [N=8] [SECONDS=5]
"""
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
parallel = int(sys.argv[2]) if len(sys.argv) > 2 else 8
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
topic = "commit-bench"

producer = Producer({"bootstrap.servers": bootstrap})
producer.produce(topic, b"x")
producer.flush(10)


def committer(index, results):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"commit-bench-{index}",
                         "enable.auto.commit": False})
    partition = TopicPartition(topic, 0, 0)
    started, done = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        partition.offset = done
        try:
            consumer.commit(offsets=[partition], asynchronous=False)
            done += 1
        except Exception:  # noqa: BLE001  (the first commits wait for the coordinator)
            time.sleep(0.05)
    results[index] = done
    consumer.close()


for count in (1, parallel):
    results = {}
    threads = [threading.Thread(target=committer, args=(i, results)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{count} committer(s): {sum(results.values()) / seconds:.0f} commits/s")
