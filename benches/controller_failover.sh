#!/usr/bin/env bash
# Controller failover time: three brokers on loopback, each a controller voter; ten times, the
# active controller's broker is killed with SIGKILL, and two times are taken: until a surviving
# broker names another active controller, and until a CreateTopics through a survivor succeeds
# (then the killed broker is restarted and rejoins). Each round also times a new topic from its
# creation through broker 1 until every broker's metadata serves it with a leader.
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
  "$spate" serve --metrics-listener off --data-dir "$dir/d$n" --listen "127.0.0.1:$port" \
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
native() { echo "127.0.0.1:$((21188 + 2 * $1))"; }
served_by() { # whether broker $1 has topic $2 with a leader for every partition
  local described
  described=$("$spate" topic describe "$2" -b "$(native "$1")" 2>/dev/null) || return 1
  echo "$described" | grep -q ' partition ' && ! echo "$described" | grep -q 'leader none'
}
for n in 1 2 3; do start "$n"; done
times=()
creates=()
served=()
for round in $(seq "$rounds"); do
  # Settled: every broker live, a controller elected.
  until [ "$("$spate" cluster status -b 127.0.0.1:21190 2>/dev/null | grep -c ' live ')" = 3 ]; do
    sleep 0.1
  done
  leader=""
  until [ -n "$leader" ]; do leader=$(leader_seen_by 1); sleep 0.05; done
  # A new topic, created through broker 1, until all three serve it.
  begin=$(date +%s%N)
  "$spate" topic create "served-$round" --partitions 3 -b "$(native 1)" >/dev/null
  for n in 1 2 3; do until served_by "$n" "served-$round"; do sleep 0.005; done; done
  served+=($((($(date +%s%N) - begin) / 1000000)))
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
  # The next CreateTopics through a survivor (an answer lost in the failover may have created it).
  until out=$("$spate" topic create "after-$round" -b "$(native "$survivor")" 2>&1) ||
    echo "$out" | grep -q TopicAlreadyExists; do
    sleep 0.01
  done
  create_ms=$((($(date +%s%N) - begin) / 1000000))
  creates+=("$create_ms")
  echo "round $round: node $leader killed, node $now_leader active after $ms ms, CreateTopics" \
    "through node $survivor after $create_ms ms; the round's new topic served by all three" \
    "after ${served[-1]} ms"
  while kill -0 "${pids[$leader]}" 2>/dev/null; do sleep 0.05; done
  start "$leader"
done
summary() { # name, values...
  local name=$1 sorted
  shift
  sorted=($(printf '%s\n' "$@" | sort -n))
  echo "$name over $rounds rounds: median ${sorted[$((rounds / 2))]} ms, worst ${sorted[$((rounds - 1))]} ms"
}
summary "controller failover (kill -9 to a new active controller)" "${times[@]}"
summary "kill -9 of the controller to the next successful CreateTopics" "${creates[@]}"
summary "a new topic until every broker serves it" "${served[@]}"
