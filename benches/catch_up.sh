#!/usr/bin/env bash
# Catch-up reads from the disk (issue 18), in one run on this machine:
#   1. the disk's ceiling: fio's sequential O_DIRECT read, 1 MiB at queue depths 1, 4 and 8,
#      and 512 KiB at depth 8 (the broker's chunks, read eight ahead);
#   2. one broker (two shards) writes a 1-partition and a 4-partition topic of GB gigabytes
#      each (1000-byte records, acks=1), once with native producers and once with Kafka ones;
#   3. each topic read back from its start by a fresh broker process (no cache holds any of
#      it), native readers reading what native producers wrote and Kafka readers what Kafka
#      producers wrote (stored as sent, served spliced), with 1 MiB and 4 MiB fetches; fio's
#      1 MiB read at depth 4 runs right before each read, and the read's ratio to it is given,
#      as this disk's speed swings by half within minutes;
#   4. four readers per partition of the 4-partition topic at once, as four consumer groups;
#   each with the broker's peak memory (VmHWM) and its read cache's own report at shutdown.
#
#   cargo build --release && benches/catch_up.sh [target/release] [GB per topic]
#
# BROKER_SETTINGS="log.read.ahead.bytes=0 ..." passes settings to the broker; ROUNDS=N reads
# each case N times (default 1), alternating cases.
# Uses ports 21390-21391 and a temporary directory beside the repository (the disk under test),
# both cleaned up on exit; needs four times GB plus 6 GiB free.
set -euo pipefail
bin=${1:-target/release}
gb=${2:-10}
source "$(dirname "$0")/scratch.sh"
scratch_dir catch-up-bench $((4 * gb + 6))

fio_read() { # block size, queue depth, seconds: MB/s
  fio --name=ceiling --filename="$dir/fio" --size=4G --ioengine=io_uring --direct=1 --rw=read \
    --bs="$1" --iodepth="$2" --runtime="$3" --time_based --output-format=json |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"] / 1e6))'
}
# 1 MiB at three depths, and the broker's own pattern: 512 KiB chunks, sixteen read ahead.
for shape in 1M:1 1M:4 1M:8 512k:16; do
  echo "fio read ${shape%:*} qd${shape#*:}: $(fio_read "${shape%:*}" "${shape#*:}" 8) MB/s"
done

start() {
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/data" --listen 127.0.0.1:21390 \
    --kafka-listener 127.0.0.1:21391 \
    $(for s in ${BROKER_SETTINGS:-}; do echo --set "$s"; done) >"$dir/log" 2>&1 &
  pid=$!
  disown
  until "$bin/spate" topic list -b 127.0.0.1:21390 >/dev/null 2>&1; do still_running; sleep 0.2; done
}
stop() { # the broker's peak memory, and what its read cache reported
  local hwm
  hwm=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  pid=
  echo "broker peak RSS: $hwm MiB"
  grep -o 'read cache.*' "$dir/log" | sed 's/^/broker: /' || true
}
loadgen() { # protocol, topic, partitions, then more loadgen arguments
  local port=21390
  [ "$1" = kafka ] && port=21391
  "$bin/spate-loadgen" -b "127.0.0.1:$port" --protocol "$1" --topic "$2" --partitions "$3" \
    --record-size 1000 --threads "$(($3 < 2 ? $3 : 2))" "${@:4}"
}

echo "== writing ${gb} GB to each topic"
start
for partitions in 1 4; do
  for protocol in native kafka; do
    loadgen "$protocol" "$protocol$partitions" "$partitions" --acks 1 --duration-secs 600 \
      --max-bytes $((gb * 1000 * 1000 * 1000)) --skip-consume
  done
done
stop

for round in $(seq "${ROUNDS:-1}"); do
  for partitions in 1 4; do
    for protocol in native kafka; do
      for fetch in 1048576 4194304; do
        echo "== $partitions partitions, $protocol, fetches of $((fetch / 1048576)) MiB"
        fio_mb=$(fio_read 1M 4 4)
        start
        out=$(loadgen "$protocol" "$protocol$partitions" "$partitions" --skip-produce \
          --fetch-bytes "$fetch")
        echo "$out"
        read_mb=$(grep -o 'consume: .* \([0-9.]*\) MB/s' <<<"$out" | grep -o '[0-9.]* MB/s' | cut -d' ' -f1)
        echo "read ÷ fio 1M qd4 just before ($fio_mb MB/s): $(python3 -c "print(round($read_mb / $fio_mb, 2))")"
        stop
      done
    done
  done
done
rm -f "$dir/fio"

echo "== 4 partitions, 4 readers each at once (native, fetches of 1 MiB)"
start
loadgen native native4 4 --skip-produce --fetch-bytes 1048576 --readers 4
stop
