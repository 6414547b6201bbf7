#!/usr/bin/env bash
# acks=all with replication, in one run on this machine:
#   1. the disk: fio's sequential O_DIRECT write (1 MiB, four deep) beside the data; one
#      writer writing as acks=all does: 4 GiB (or 60 s) of 256 KiB writes into a new file's
#      blocks with an fdatasync after each (ext4 makes durable at each the extent changes that
#      turn the blocks from allocated into written); and nine such writers at once (1 GiB each),
#      two writes deep, as the three brokers' nine partition logs write, into new blocks as a
#      new topic's logs do, then again over the blocks they wrote, as the steady state's do;
#   2. replication factor 1 on one broker: the loadgen's closed loop with acks=all, 16 batches
#      of 256 KiB in flight a partition (see closed_loop below);
#   3. replication factor 3 on three brokers (loopback, each one shard; the machine's two CPUs
#      shared by the three and the loadgen): the same closed loop to a topic with
#      min.insync.replicas 2, every record fdatasync'ed on all three before its answer; then
#      the same once retention deletes as fast as the partitions roll, so that each roll
#      reuses a deleted segment's file and writes over written blocks (a broker's steady state);
#   4. a topic like it in open loop at half of (3)'s rate, 64 KiB batches: produce latency
#      p50/p99/p99.9;
#   5. the same closed loop with acks=1: the leaders answer once they have written, and the
#      followers copy as fast as the disk lets them, so the disk's write rate in this run is
#      what it takes from the three brokers' writes (the producer's rate is not: the followers
#      fall behind).
#   6. fio's one writer again, as in (1): it is this machine's noisiest figure, and the ratios
#      at the end use the higher of its two runs.
# Each run also prints what the disk under the data wrote over it: the device's own count (any
# other writer on the device included), over the whole run (a loadgen's warm-up included), or
# "unknown" where the data is on no block device of its own (tmpfs, overlay).
#
#   cargo build --release && benches/replication.sh [target/release] [seconds]
#
# BROKER_SETTINGS="replica.fetch.max.bytes=8388608 ..." passes settings to every broker;
# LOADGEN_ARGS="--inflight 24" to every loadgen run (a run's own flags, --acks included, follow
# it and win). Uses ports 21290-21299 and a temporary directory beside the repository (the disk
# under test), both cleaned up on exit; each RF 3 run has a topic of its own, deleted after it;
# needs twice the seconds plus 12 GiB free.
set -euo pipefail
# A failure inside $(...) stops the script too (bash leaves errexit off there otherwise).
shopt -s inherit_errexit
bin=${1:-target/release}
seconds=${2:-10}
partitions=3
source "$(dirname "$0")/scratch.sh"
scratch_dir replication-bench $((2 * (seconds + 2) + 8))

# The block device under $dir, for its count of sectors written (field 7 of its stat file).
device_stat=/sys/dev/block/$(mountpoint -d "$(df --output=target "$dir" | tail -1)" 2>/dev/null || true)/stat
disk_mark() { # sectors written so far, and when
  if [ -r "$device_stat" ]; then
    echo "$(awk '{ print $7 }' "$device_stat") $(date +%s.%N)"
  fi
}
disk_since() { # what the disk wrote since mark $1
  local now
  now=$(disk_mark)
  if [ -z "$1" ] || [ -z "$now" ]; then
    echo "the disk wrote: unknown (no block device found for the file system of $dir)"
    return
  fi
  echo "$1 $now" | awk '{ printf "the disk wrote: %.0f MB/s\n", ($3 - $1) * 512 / 1e6 / ($4 - $2) }'
}

fio_write() { # fio's write run with the flags after $1, printed as "$1: N MB/s (a third: ...)",
  # then the disk's write; N is left in $fio_mb
  local mark line
  mark=$(disk_mark)
  line=$(fio --ioengine=io_uring --direct=1 --rw=write --output-format=json "${@:2}" |
    python3 -c 'import json, sys
mb = json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"] / 1e6
print(f"{sys.argv[1]}: {mb:.0f} MB/s (a third: {mb / 3:.0f} MB/s)")' "$1")
  echo "$line"
  fio_mb=$(echo "$line" | sed -n 's/.*: \([0-9]*\) MB\/s (a third.*/\1/p')
  disk_since "$mark"
}

fio_one_writer() { # fio's plain write: the issue's ceiling, leaving it in $fio_mb
  fio_write "fio write" --name=ceiling --filename="$dir/fio" --size=4G --bs=1M --iodepth=4 \
    --runtime="$seconds" --time_based
  rm -f "$dir/fio"
}
echo "== fio: sequential O_DIRECT write, 1 MiB, iodepth 4"
fio_one_writer
fio_one_first=$fio_mb
fio_write "fio write of 4 GiB with an fdatasync after each, into new blocks" --name=synced \
  --filename="$dir/fio" --size=4G --bs=256k --iodepth=4 --fdatasync=1 --runtime=60
rm -f "$dir/fio"
nine_writers() { # fio_write of nine synced writers of 1 GiB each in $dir, labelled $1
  fio_write "$1" --name=streams --directory="$dir" --numjobs=9 --group_reporting --size=1G \
    --bs=256k --iodepth=2 --fdatasync=1 --runtime=60
}
nine_writers "fio, nine writers of 1 GiB each into new blocks, 256 KiB two deep, an fdatasync after each, in all"
fio_nine_new=$fio_mb
# Over written blocks only where the first nine wrote their 9 GiB within its 60 s (150 MB/s).
nine_writers "the same nine again, over the blocks they wrote (as rolls that reuse files write)"
fio_nine_written=$fio_mb
rm -f "$dir"/streams.*

voters="1@127.0.0.1:21290,2@127.0.0.1:21292,3@127.0.0.1:21294"
start() { # node, cores, voters
  local n=$1 port=$((21288 + 2 * $1))
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/d$n" --listen "127.0.0.1:$port" \
    --kafka-listener "127.0.0.1:$((port + 1))" --cores "$2" \
    --set node.id="$n" ${3:+--set controller.quorum.voters="$3"} \
    $(for s in ${BROKER_SETTINGS:-}; do echo --set "$s"; done) >"$dir/log$n" 2>&1 &
  pids[$n]=$!
  disown
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  pids=()
  rm -rf "$dir"/d*
}
busy() { # each CPU's busy time in jiffies, and all of it
  awk '/^cpu[0-9]/ { printf "%d %d ", $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat
}
# The closed loops keep 16 batches of 256 KiB in flight a partition. With acks=all and three
# replicas an answer takes a leader's and a follower's write and fdatasync and two fetch rounds,
# about twice what it takes on one broker, so the loadgen's default of 8 left the brokers
# waiting on it: RF 3 in steady state gave 565 MB/s at 8, then 652, 623, 650 and 649 at 12, 16,
# 24 and 32 (2026-12-07), the answers' latency growing with the window past 12. A closed loop
# measures the brokers' throughput only once a wider window brings no more.
closed_loop="--inflight 16"
loadgen() { # the run's output, then how busy the CPUs were over it and what the disk wrote
  local before after mark
  before=$(busy)
  mark=$(disk_mark)
  "$bin/spate-loadgen" -b 127.0.0.1:21290 --topic "$1" --partitions "$partitions" \
    --duration-secs "$seconds" --warmup-secs 2 --skip-consume $closed_loop ${LOADGEN_ARGS:-} \
    --acks "${acks:-all}" "${@:2}"
  disk_since "$mark"
  after=$(busy)
  echo "$before | $after" | awk -F'|' '{
    n = split($1, b, " "); split($2, a, " "); line = "CPUs busy:"
    for (i = 1; i < n; i += 2) line = line sprintf(" cpu%d %.0f%%", (i - 1) / 2, 100 * (a[i] - b[i]) / (a[i + 1] - b[i + 1]))
    print line }'
}

echo "== replication factor 1, one broker (two shards)"
start 1 0-1 ""
until "$bin/spate" topic list -b 127.0.0.1:21290 >/dev/null 2>&1; do still_running; sleep 0.2; done
"$bin/spate" topic create single --partitions "$partitions" -b 127.0.0.1:21290 >/dev/null
loadgen single | grep -E "^produce|^CPUs|^the disk"
stop_all

echo "== replication factor 3, three brokers (one shard each), min.insync.replicas 2"
start 1 0 "$voters"
start 2 1 "$voters"
start 3 0 "$voters"
until [ "$("$bin/spate" cluster status -b 127.0.0.1:21290 2>/dev/null | grep -c ' live ')" = 3 ]; do
  still_running
  sleep 0.2
done
replicated() { # a topic of replication factor 3 for one run, deleted after it: its output
  "$bin/spate" topic create "$1" --partitions "$partitions" --replication-factor 3 \
    ${topic_settings:-} -b 127.0.0.1:21290 >/dev/null
  loadgen "$@"
  "$bin/spate" topic delete "$1" -b 127.0.0.1:21290 >/dev/null
}
out=$(replicated closed-loop) # stops the script if it fails (its errors on stderr)
echo "$out" | grep -E "^produce|^CPUs|^the disk"
echo "== the same in steady state: retention deletes as fast as the partitions roll, and each"
echo "   roll reuses a deleted segment's file (512 MiB kept a partition, 256 MiB segments, 10 s"
echo "   of warm-up to get there)"
steady=$(topic_settings="--config retention.bytes=536870912 --config segment.bytes=268435456" \
  replicated steady-state --warmup-secs 10)
echo "$steady" | grep -E "^produce|^CPUs|^the disk"
rate=$(echo "$out" | sed -n 's/^produce: .* = \([0-9]*\) records\/s.*/\1/p' | head -1)
if [ -n "$rate" ]; then
  half=$(awk -v r="$rate" 'BEGIN { printf "%d", r / 2 }')
  echo "== open loop at half: $half records/s"
  # 64 KiB batches need four times the batches in flight of the closed loop's 256 KiB ones for
  # the same bytes: with too few, the schedule waits for answers and the latency measured is
  # the window's, not the broker's.
  replicated open-loop --rate "$half" --batch-bytes 65536 --inflight 32 |
    grep -E "^produce|publish|^CPUs|^the disk"
fi
echo "== the same closed loop with acks=1 (the followers copy as fast as the disk lets them)"
acks=1 replicated acks-1 | grep -E "^produce: [0-9]|^CPUs|^the disk"
stop_all
echo "== fio's one writer again (the ratios below use the higher of its two runs)"
fio_one_writer
fio_one=$(awk -v a="$fio_one_first" -v b="$fio_mb" 'BEGIN { print (a + 0 > b + 0) ? a : b }')
produced() { sed -n 's/^produce: .* records\/s, \([0-9.]*\) MB\/s.*/\1/p' | head -1; }
echo "== RF 3 against a third of each ceiling (MB/s produced; the issue's goal: 0.8 of fio's one"
echo "   writer, here $fio_one MB/s)"
awk -v new="$(echo "$out" | produced)" -v steady="$(echo "$steady" | produced)" \
  -v one="$fio_one" -v nine_new="$fio_nine_new" -v nine_written="$fio_nine_written" 'BEGIN {
    if (new == "" || steady == "" || one + 0 == 0 || nine_new + 0 == 0 || nine_written + 0 == 0) exit
    printf "a new topic: %.0f MB/s, %.2f of fio (one writer), %.2f of nine synced writers into new blocks\n",
      new, 3 * new / one, 3 * new / nine_new
    printf "steady state: %.0f MB/s, %.2f of fio (one writer), %.2f of nine synced writers over written blocks\n",
      steady, 3 * steady / one, 3 * steady / nine_written }'
