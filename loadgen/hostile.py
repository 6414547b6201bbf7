#!/usr/bin/env python3
"""Misbehaving clients to run beside a benchmark: idle connections on both listeners, Kafka
clients that pipeline requests and never read a response, and 2 GiB length prefixes. Holds
them for --seconds (bounded), then closes everything and prints what it did.

Usage: loadgen/hostile.py --native 127.0.0.1:9192 --kafka 127.0.0.1:9092 --seconds 30
Measure a benchmark with and without it running (docs/PERFORMANCE.md).
"""
import argparse
import resource
import socket
import struct
import threading
import time


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def metadata_v1(correlation_id):
    """A Kafka Metadata v1 request for every topic, size-prefixed."""
    client = b"hostile"
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client)) + client + struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def pipeline(addr, requests, deadline, sent):
    """Writes requests and never reads; stops when the broker stops taking them."""
    sock = socket.create_connection(addr)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(2)
    count = 0
    try:
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            sock.sendall(metadata_v1(i))
            count += 1
    except (socket.timeout, OSError):
        pass
    sent.append(count)
    return sock


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", type=address, required=True)
    parser.add_argument("--kafka", type=address, required=True)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--pipeliners", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deadline = time.monotonic() + args.seconds

    held = []
    for i in range(args.idle):
        held.append(socket.create_connection(args.native if i % 2 == 0 else args.kafka))
    for addr in (args.native, args.kafka):
        sock = socket.create_connection(addr)
        sock.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\0" * 28)
        held.append(sock)
    sent = []
    threads = [
        threading.Thread(target=lambda: held.append(pipeline(args.kafka, args.requests, deadline, sent)))
        for _ in range(args.pipeliners)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"hostile: {args.idle} idle connections, 2 GiB prefixes on both listeners, "
          f"{args.pipeliners} pipeliners held back after {sorted(sent)} requests", flush=True)
    time.sleep(max(0.0, deadline - time.monotonic()))
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
