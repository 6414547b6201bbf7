#!/usr/bin/env bash
# False fencing under full load, to choose the failover defaults: three brokers on loopback (as
# replication.sh: one shard each, the machine's two CPUs shared by them and the loadgen), for
# each pair of broker.session.timeout.ms and broker.heartbeat.interval.ms, the loadgen's closed
# loop with acks=all to a topic of replication factor 3 (min.insync.replicas 2) and a tailing
# consumer, for the given time. No broker is silent in these runs: every broker the controller
# fences for silence is fenced falsely, and every in-sync change (a follower left behind and
# back) or leader change comes from load alone.
#
#   cargo build --release && benches/false_fencing.sh [target/release] [seconds] [pairs]
#
# pairs: "session_ms:heartbeat_ms ..." (default "9000:2000 3000:500 1500:250 750:125").
# Uses ports 21390-21399 and a temporary directory beside the repository, both cleaned up on
# exit. The topic keeps 1 GiB per partition (retention checked every 2 s), so the disk holds
# about 20 GB at most whatever the run's length; needs 24 GiB free.
set -euo pipefail
bin=${1:-target/release}
seconds=${2:-60}
pairs=${3:-"9000:2000 3000:500 1500:250 750:125"}
partitions=6
source "$(dirname "$0")/scratch.sh"
scratch_dir false-fencing 24

voters="1@127.0.0.1:21390,2@127.0.0.1:21392,3@127.0.0.1:21394"
start() { # node, cores, session, heartbeat
  local n=$1 port=$((21388 + 2 * $1))
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/d$n" --listen "127.0.0.1:$port" \
    --kafka-listener "127.0.0.1:$((port + 1))" --cores "$2" \
    --set node.id="$n" --set controller.quorum.voters="$voters" \
    --set broker.session.timeout.ms="$3" --set broker.heartbeat.interval.ms="$4" \
    --set log.retention.check.interval.ms=2000 \
    >"$dir/log$n" 2>&1 &
  pids[$n]=$!
  disown
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  pids=()
}

printf '%-22s %-28s %-16s %-16s %s\n' "session:heartbeat ms" "produced" "fenced (silent)" "in-sync changes" "leader changes"
for pair in $pairs; do
  session=${pair%%:*}
  heartbeat=${pair##*:}
  rm -rf "$dir"/d* "$dir"/log*
  start 1 0 "$session" "$heartbeat"
  start 2 1 "$session" "$heartbeat"
  start 3 0 "$session" "$heartbeat"
  until [ "$("$bin/spate" cluster status -b 127.0.0.1:21390 2>/dev/null | grep -c ' live ')" = 3 ]; do
    still_running
    sleep 0.2
  done
  "$bin/spate" topic create loaded --partitions "$partitions" --replication-factor 3 \
    --config retention.bytes=1073741824 --config segment.bytes=134217728 \
    -b 127.0.0.1:21390 >/dev/null
  out=$("$bin/spate-loadgen" -b 127.0.0.1:21390 --topic loaded --partitions "$partitions" \
    --acks all --duration-secs "$seconds" --warmup-secs 2 --tail 2>&1 || true)
  produced=$(echo "$out" | sed -n 's/^produce: .* \([0-9.]* MB\/s\).*/\1/p' | head -1)
  # Distinct (node, broker epoch) the controllers decided to fence for silence.
  fenced=$(cat "$dir"/log* | { grep 'fencing a broker silent' || true; } |
    sed -n 's/.*node=\([0-9]*\) broker_epoch=\([0-9]*\).*/\1:\2/p' | sort -u | wc -l)
  changes=$(cat "$dir"/log* | grep -c 'asking for a new in-sync set' || true)
  epochs=$("$bin/spate" topic describe loaded -b 127.0.0.1:21390 2>/dev/null |
    sed -n 's/.*epoch *\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
  printf '%-22s %-28s %-16s %-16s %s\n' "$session:$heartbeat" "${produced:-?}" "$fenced" "$changes" "$epochs"
  stop_all
done
