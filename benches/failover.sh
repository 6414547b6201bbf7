#!/usr/bin/env bash
# Partition failover time: three brokers on loopback (each a controller voter), a topic of one
# partition with replication factor 3; the loadgen produces to it with acks=all, one batch in
# flight, and sends a refused batch again to the leader it finds anew. Each round kills the
# partition's leader with SIGKILL, waits until the loadgen is acknowledged again and the killed
# broker is back in the in-sync set, and goes on. The loadgen reports each failover's gap: from
# the batch's first refusal (or lost connection) to its acknowledgement by the new leader.
#
#   cargo build --release && benches/failover.sh [target/release] [rounds] [broker settings...]
#   e.g. benches/failover.sh target/release 20 broker.session.timeout.ms=2000 \
#          broker.heartbeat.interval.ms=200
#
# Uses ports 21390-21395 and a temporary directory beside the repository, both cleaned up.
set -euo pipefail
bin=${1:-target/release}
rounds=${2:-20}
settings=("${@:3}")
dir=$(mktemp -d -p "$(pwd)" failover-bench.XXXXXX)
pids=()
loadgen_pid=""
cleanup() {
  [ -n "$loadgen_pid" ] && kill -9 "$loadgen_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  sleep 1
  rm -rf "$dir"
}
trap cleanup EXIT
voters="1@127.0.0.1:21390,2@127.0.0.1:21392,3@127.0.0.1:21394"
native() { echo "127.0.0.1:$((21388 + 2 * $1))"; }
start() {
  local n=$1 port=$((21388 + 2 * $1))
  "$bin/spate" serve --metrics-listener off --data-dir "$dir/d$n" --listen "127.0.0.1:$port" \
    --kafka-listener "127.0.0.1:$((port + 1))" --cores $(((n + 1) % 2)) \
    --set node.id="$n" --set controller.quorum.voters="$voters" \
    $(for s in "${settings[@]}"; do echo --set "$s"; done) >>"$dir/log$n" 2>&1 &
  pids[$n]=$!
  disown
}
# The partition as broker $1 describes it: its leader, and how many replicas are in sync.
described() {
  "$bin/spate" topic describe failover -b "$(native "$1")" 2>/dev/null |
    awk '$1 == "partition" && $2 == 0 { for (i = 1; i <= NF; i++) { if ($i == "leader") l = $(i + 1);
      if ($i == "isr") s = split($(i + 1), members, ",") } } END { print l, s }'
}
for n in 1 2 3; do start "$n"; done
until [ "$("$bin/spate" cluster status -b "$(native 1)" 2>/dev/null | grep -c ' live ')" = 3 ]; do
  sleep 0.2
done
"$bin/spate" topic create failover --partitions 1 --replication-factor 3 -b "$(native 1)" >/dev/null
"$bin/spate-loadgen" -b "$(native 1)" --topic failover --partitions 1 --acks all --inflight 1 \
  --batch-bytes 16384 --duration-secs 100000 --skip-consume --cores 1 >"$dir/loadgen" 2>&1 &
loadgen_pid=$!
sleep 2
for round in $(seq "$rounds"); do
  read -r leader _ < <(described 1 || described 2)
  [ -n "$leader" ] && [ "$leader" != none ] || { echo "no leader to kill"; exit 1; }
  kill -9 "${pids[$leader]}"
  while kill -0 "${pids[$leader]}" 2>/dev/null; do sleep 0.05; done
  survivor=$((leader % 3 + 1))
  # A new leader, then the killed broker back and in sync again.
  until read -r now _ < <(described "$survivor") && [ -n "$now" ] && [ "$now" != none ] &&
    [ "$now" != "$leader" ]; do sleep 0.05; done
  start "$leader"
  until [ "$(described "$survivor" | awk '{ print $2 }')" = 3 ]; do sleep 0.1; done
  echo "round $round: killed broker $leader, broker $now leads"
  sleep 1
done
kill -INT "$loadgen_pid"
wait "$loadgen_pid" || true
loadgen_pid=""
grep -E "^produce" "$dir/loadgen"
sed -n 's/.*failover gaps.*each (ms): //p' "$dir/loadgen" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n |
  awk '{ g[NR] = $1 } END { if (NR) printf "failover gaps over %d kills: median %d ms, worst %d ms\n", NR, g[int((NR + 1) / 2)], g[NR] }'
