#!/usr/bin/env bash
# Catch-up reads next to Apache Iggy's (issue 18), in one run on this machine, 1000-byte
# records and 1 MB reads (Iggy's 1000-message polls, Spate's 1 MiB fetches):
#   1. fio's sequential O_DIRECT read, 1 MiB at depth 4, at the start and the end;
#   2. Iggy, 4 streams of one partition (4 pinned producers, then 4 pinned consumers) and 1
#      stream: GB gigabytes written, then read twice from its warm page cache, and with COLD=1
#      once more after dropping the page cache (root; it drops the whole machine's);
#   3. Spate, a topic of 4 partitions and one of 1 partition, GB gigabytes each (native
#      producers, acks=1): read by a fresh broker with the default read cache (from the disk:
#      O_DIRECT, no page cache), then by a fresh broker whose read cache holds the whole topic
#      (`log.read.cache.shard.bytes` = GB + 1 GiB), twice: from the disk, then from memory,
#      which is what Iggy's warm page cache is.
#
#   cargo build --release
#   (cd iggy && cargo build --release -p server -p iggy-bench --bin iggy-server --bin iggy-bench)
#   benches/versus_iggy.sh target/release <iggy's target/release> [GB]
#
# Iggy as measured for docs/PERFORMANCE.md: apache/iggy cc269ef70ef2 (2026-08-21), built with
# Rust 1.95 (its workspace allows it; its toolchain file asks for 1.97.1), default server
# configuration (page cache, no fsync), libhwloc-dev and libudev-dev installed; building the two
# packages alone keeps the bench dashboard's V8 out.
# Uses ports 21390-21391 and 21395 and a temporary directory beside the repository (the disk under
# test), both cleaned up on exit; needs GB plus 6 GiB free.
set -euo pipefail
bin=${1:-target/release}
iggy=${2:?the directory of iggy-server and iggy-bench}
gb=${3:-5}
source "$(dirname "$0")/scratch.sh"
scratch_dir versus-iggy-bench $((gb + 6))

fio_read() {
  fio --name=ceiling --filename="$dir/fio" --size=4G --ioengine=io_uring --direct=1 --rw=read \
    --bs=1M --iodepth=4 --runtime=4 --time_based --output-format=json |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"] / 1e6))'
}
echo "fio read 1M qd4: $(fio_read) MB/s"

iggy_bench() { # streams, then the benchmark and its arguments: the line of totals
  "$iggy/iggy-bench" -T "${gb}GB" "${@:2}" --streams "$1" tcp --server-address 127.0.0.1:21395 2>&1 |
    grep -o '^[A-Za-z]* Results: Total throughput: [0-9.]* MB/s'
}
for streams in 4 1; do
  echo "== Iggy, $streams streams of one partition, ${gb} GB"
  IGGY_SYSTEM_PATH="$dir/iggy" IGGY_TCP_ADDRESS=127.0.0.1:21395 IGGY_HTTP_ENABLED=false \
    IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
    "$iggy/iggy-server" --fresh --with-default-root-credentials >"$dir/iggy.log" 2>&1 &
  pid=$!
  until (echo >/dev/tcp/127.0.0.1/21395) 2>/dev/null; do still_running; sleep 0.2; done
  iggy_bench "$streams" pinned-producer --producers "$streams"
  for read in "from the page cache" "from the page cache, again"; do
    echo "$read: $(iggy_bench "$streams" --reuse-streams pinned-consumer --consumers "$streams")"
  done
  if [ "${COLD:-0}" = 1 ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
    echo "page cache dropped: $(iggy_bench "$streams" --reuse-streams pinned-consumer --consumers "$streams")"
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
  rm -rf "$dir/iggy"
done

start() {
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/data" --listen 127.0.0.1:21390 \
    --kafka-listener 127.0.0.1:21391 "$@" >"$dir/log" 2>&1 &
  pid=$!
  disown
  until "$bin/spate" topic list -b 127.0.0.1:21390 >/dev/null 2>&1; do still_running; sleep 0.2; done
}
stop() {
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  pid=
}
loadgen() { # topic's partitions, then more loadgen arguments
  "$bin/spate-loadgen" -b 127.0.0.1:21390 --topic "p$1" --partitions "$1" --record-size 1000 \
    --threads "$(($1 < 2 ? $1 : 2))" "${@:2}" | grep -o '^[a-z]*: [0-9]* records .* MB/s'
}
for partitions in 4 1; do
  echo "== Spate, $partitions partitions, ${gb} GB"
  start
  loadgen "$partitions" --acks 1 --duration-secs 600 --max-bytes $((gb * 1000 * 1000 * 1000)) \
    --skip-consume
  stop
  start
  echo "fresh broker, default read cache: $(loadgen "$partitions" --skip-produce --fetch-bytes 1048576)"
  stop
  start --set "log.read.cache.shard.bytes=$(((gb + 1) << 30))"
  echo "fresh broker, a read cache for the whole topic: $(loadgen "$partitions" --skip-produce --fetch-bytes 1048576)"
  echo "the same broker again, from its read cache: $(loadgen "$partitions" --skip-produce --fetch-bytes 1048576)"
  stop
  rm -rf "$dir/data"
done
echo "fio read 1M qd4: $(fio_read) MB/s"
