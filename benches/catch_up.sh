#!/usr/bin/env bash
# Catch-up reads from the disk (issue 18), in one run on this machine:
#   1. the disk's ceiling: fio's sequential O_DIRECT read, 1 MiB at queue depths 1, 4 and 8,
#      and 512 KiB at depth 8 (the broker's chunks, read eight ahead);
#   2. one broker (two shards) writes a 1-partition and a 4-partition topic of GB gigabytes
#      each (1000-byte records, acks=1);
#   3. each topic read back from its start by a fresh broker process (no cache holds any of
#      it): native and Kafka, 1 MiB and 4 MiB fetches;
#   4. four readers per partition of the 4-partition topic at once, as four consumer groups;
#   each with the broker's peak memory (VmHWM) and its read cache's own report at shutdown.
#
#   cargo build --release && benches/catch_up.sh [target/release] [GB per topic]
#
# BROKER_SETTINGS="log.read.ahead.bytes=0 ..." passes settings to the broker.
# Uses ports 21390-21391 and a temporary directory beside the repository (the disk under test),
# both cleaned up on exit; needs twice GB plus 6 GiB free.
set -euo pipefail
bin=${1:-target/release}
gb=${2:-10}
dir=$(mktemp -d -p "$(pwd)" catch-up-bench.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  sleep 1
  rm -rf "$dir"
}
trap cleanup EXIT
free_kib=$(df -k --output=avail "$dir" | tail -1)
if [ "$free_kib" -lt $(((2 * gb + 6) * 1024 * 1024)) ]; then
  echo "needs $((2 * gb + 6)) GiB free beside $(pwd), has $((free_kib / 1024)) MiB" >&2
  exit 1
fi

# 1 MiB at three depths, and the broker's own pattern: 512 KiB chunks, eight read ahead.
for shape in 1M:1 1M:4 1M:8 512k:8; do
  fio --name=ceiling --filename="$dir/fio" --size=4G --ioengine=io_uring --direct=1 --rw=read \
    --bs="${shape%:*}" --iodepth="${shape#*:}" --runtime=8 --time_based --output-format=json |
    python3 -c 'import json, sys
mb = json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"] / 1e6
print(f"fio read '"${shape%:*} qd${shape#*:}"': {mb:.0f} MB/s")'
done
rm -f "$dir/fio"

start() {
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/data" --listen 127.0.0.1:21390 \
    --kafka-listener 127.0.0.1:21391 \
    $(for s in ${BROKER_SETTINGS:-}; do echo --set "$s"; done) >"$dir/log" 2>&1 &
  pid=$!
  disown
  until "$bin/spate" topic list -b 127.0.0.1:21390 >/dev/null 2>&1; do sleep 0.2; done
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
  loadgen native "p$partitions" "$partitions" --acks 1 --duration-secs 600 \
    --max-bytes $((gb * 1000 * 1000 * 1000)) --skip-consume
done
stop

for partitions in 1 4; do
  for protocol in native kafka; do
    for fetch in 1048576 4194304; do
      echo "== $partitions partitions, $protocol, fetches of $((fetch / 1048576)) MiB"
      start
      loadgen "$protocol" "p$partitions" "$partitions" --skip-produce --fetch-bytes "$fetch"
      stop
    done
  done
done

echo "== 4 partitions, 4 readers each at once (native, fetches of 1 MiB)"
start
loadgen native p4 4 --skip-produce --fetch-bytes 1048576 --readers 4
stop
