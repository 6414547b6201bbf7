#!/usr/bin/env bash
# Overload: producers push faster than the disk can take, and the broker must slow them down
# (produce latency rises) instead of queueing without bound (memory stays flat). The disk is made
# slow on purpose: the broker runs in a cgroup-v1 blkio group whose writes to the data
# directory's device are throttled to MB_PER_SEC. For each acks mode, prints the loadgen's
# figures and the broker's peak resident memory (VmHWM).
# Usage (root, cgroup v1 blkio): loadgen/overload.sh [DIR] [MB_PER_SEC] [SECONDS] [PARTITIONS]
# Environment: ACKS (default "1 0 all") picks the runs; BROKER_ARGS is added to `spate serve`
# (e.g. BROKER_ARGS="--set queued.max.request.bytes=1073741824").
set -euo pipefail
dir=${1:-/tmp/spate-overload}
rate_mb=${2:-50}
secs=${3:-15}
partitions=${4:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
port=19591
blkio=/sys/fs/cgroup/blkio
group="$blkio/spate-overload-$$"
[[ -w $blkio ]] || { echo "needs root and a cgroup-v1 blkio hierarchy at $blkio"; exit 1; }
mkdir -p "$dir"
broker=""
cleanup() {
  if [[ -n $broker ]]; then kill -9 "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  [[ -d $group ]] && rmdir "$group" 2>/dev/null || true
  rm -rf "$dir/data"
}
trap cleanup EXIT

# The whole disk holding DIR (throttling applies to a disk, not a partition of it).
device=$(df -P "$dir" | awk 'NR==2 {print $1}')
disk=$(lsblk -no PKNAME "$device" 2>/dev/null | head -1)
disk=${disk:-$(basename "$device")}
majmin=$(lsblk -dno MAJ:MIN "/dev/$disk" | tr -d ' ')
echo "throttling writes to /dev/$disk ($majmin) at $rate_mb MB/s"

cargo build --release --workspace --quiet --manifest-path "$root/Cargo.toml"
spate="$root/target/release/spate"
loadgen="$root/target/release/spate-loadgen"

mkdir "$group"
echo "$majmin $((rate_mb * 1000 * 1000))" > "$group/blkio.throttle.write_bps_device"

for acks in ${ACKS:-1 0 all}; do
  rm -rf "$dir/data"
  "$spate" serve --metrics-listener off --data-dir "$dir/data" --listen "127.0.0.1:$port" --kafka-listener "127.0.0.1:$((port + 1))" \
    ${BROKER_ARGS:-} > "$dir/serve.out" 2> "$dir/serve.err" &
  broker=$!
  echo "$broker" > "$group/cgroup.procs"
  sleep 2
  echo "== acks=$acks, $partitions partitions, disk writes throttled to $rate_mb MB/s"
  "$loadgen" -b "127.0.0.1:$port" --topic "overload-$acks" --partitions "$partitions" \
    --duration-secs "$secs" --acks "$acks" --skip-consume --threads 2 | grep -E "produce|ack|records"
  peak=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$broker/status")
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$broker/status")
  echo "broker memory: peak $peak MiB, at the end $rss MiB"
  kill -TERM "$broker"
  wait "$broker" || true
  broker=""
done
