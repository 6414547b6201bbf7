#!/usr/bin/env bash
# Controller failover time: three brokers on loopback, each a controller voter; ten times, the
# active controller's broker is killed with SIGKILL, and the time until a surviving broker names
# another active controller is taken (then the killed broker is restarted and rejoins).
#
#   cargo build --release && benches/controller_failover.sh [target/release/spate] [rounds]
#
# Prints each round and the median and worst. Uses ports 21190-21195 and a temporary directory,
# both cleaned up on exit.
set -euo pipefail
spate=${1:-target/release/spate}
rounds=${2:-10}
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  sleep 1
  rm -rf "$dir"
}
trap cleanup EXIT
voters="1@127.0.0.1:21190,2@127.0.0.1:21192,3@127.0.0.1:21194"
start() {
  local n=$1 port=$((21188 + 2 * $1))
  "$spate" serve --data-dir "$dir/d$n" --listen "127.0.0.1:$port" \
    --kafka-listener "127.0.0.1:$((port + 1))" --cores $(((n + 1) % 2)) \
    --set node.id="$n" --set controller.quorum.voters="$voters" \
    --set broker.session.timeout.ms=3000 --set broker.heartbeat.interval.ms=300 \
    >"$dir/log$n" 2>&1 &
  pids[$n]=$!
  disown
}
leader_seen_by() {
  "$spate" cluster status -b "127.0.0.1:$((21188 + 2 * $1))" 2>/dev/null |
    sed -n 's/.*active controller \([0-9]*\) .*/\1/p'
}
for n in 1 2 3; do start "$n"; done
times=()
for round in $(seq "$rounds"); do
  # Settled: every broker live, a controller elected.
  until [ "$("$spate" cluster status -b 127.0.0.1:21190 2>/dev/null | grep -c ' live ')" = 3 ]; do
    sleep 0.1
  done
  leader=""
  until [ -n "$leader" ]; do leader=$(leader_seen_by 1); sleep 0.05; done
  survivor=$((leader % 3 + 1))
  begin=$(date +%s%N)
  kill -9 "${pids[$leader]}"
  while true; do
    now_leader=$(leader_seen_by "$survivor")
    if [ -n "$now_leader" ] && [ "$now_leader" != "$leader" ]; then break; fi
    sleep 0.01
  done
  ms=$((($(date +%s%N) - begin) / 1000000))
  times+=("$ms")
  echo "round $round: node $leader killed, node $now_leader active after $ms ms"
  while kill -0 "${pids[$leader]}" 2>/dev/null; do sleep 0.05; done
  start "$leader"
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "controller failover over $rounds rounds: median ${sorted[$((rounds / 2))]} ms, worst ${sorted[$((rounds - 1))]} ms"
