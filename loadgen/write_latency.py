#!/usr/bin/env python3
"""Splits a write's latency into the device's part and the kernel's, from a perf recording of
io_uring and block tracepoints taken while the broker runs; the broker's own view is its
`log.append_write` histogram (printed at shutdown). Also counts how many block writes were issued
by io_uring's worker threads (punted) rather than inline by the shard.

  perf record -a -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \\
      -e block:block_rq_issue -e block:block_rq_complete -o uring.data -- sleep 3
  perf script -i uring.data > uring.txt
  loadgen/write_latency.py uring.txt
"""
import re
import sys

TIME = re.compile(r"\s(\d+\.\d+):\s+(\S+):")
REQ = re.compile(r"req (0x[0-9a-f]+)")
BLOCK_ISSUE = re.compile(r"\d+,\d+ (\S+) \d+ \(\) (\d+) \+ \d+")
BLOCK_DONE = re.compile(r"\d+,\d+ (\S+) \(\) (\d+) \+ \d+")


def percentiles(samples):
    ordered = sorted(samples)
    if not ordered:
        return "no samples"
    at = lambda p: ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1e6
    return "%d samples: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f µs" % (
        len(ordered), at(0.5), at(0.9), at(0.99), at(0.999))


def main(path):
    submitted, uring = {}, []
    issued, device = {}, []
    punted = inline = 0
    for line in open(path):
        found = TIME.search(line)
        if not found:
            continue
        when, event = float(found.group(1)), found.group(2)
        if event == "io_uring:io_uring_submit_req" and "opcode WRITE_FIXED" in line:
            submitted[REQ.search(line).group(1)] = when
        elif event == "io_uring:io_uring_complete":
            start = submitted.pop(REQ.search(line).group(1), None)
            if start is not None:
                uring.append(when - start)
        elif event == "block:block_rq_issue":
            block = BLOCK_ISSUE.search(line)
            if block and "W" in block.group(1):
                issued[block.group(2)] = when
                if line.split()[0].startswith("iou-wrk"):
                    punted += 1
                else:
                    inline += 1
        elif event == "block:block_rq_complete":
            block = BLOCK_DONE.search(line)
            start = issued.pop(block.group(2), None) if block else None
            if start is not None:
                device.append(when - start)
    print("io_uring write, submitted to completed:", percentiles(uring))
    print("block device write, issued to completed:", percentiles(device))
    print(f"block writes issued by io_uring workers: {punted}, inline: {inline}")


if __name__ == "__main__":
    main(sys.argv[1])
