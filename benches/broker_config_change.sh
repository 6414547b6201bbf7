#!/usr/bin/env bash
# What a dynamic broker setting's change costs (issue 17), in one run on this machine: one
# broker on one core (--cores 0) holding PARTITIONS partitions (10 topics), and the wall time of
# `spate cluster config` (a new process: it connects, asks, and returns once every shard of the
# broker has the change) for
#   1. no change (the command's own cost, to subtract);
#   2. a cluster-wide log.retention.ms (every shard resolves each topic again and hands every
#      open partition its settings);
#   3. the broker's own log.retention.ms (the same on this broker);
#   4. a cluster-wide min.insync.replicas (besides, the controller looks at every partition);
#   5. a topic's retention.ms (`spate topic alter`, one topic re-resolved), for comparison.
# Each is the median of 9, the values alternating so that every one is a change.
#
#   cargo build --release && benches/broker_config_change.sh [target/release] [partitions]
#
# Uses ports 21590-21592 and a temporary directory beside the repository, both cleaned up on
# exit; needs 2 GiB free (the partitions' preallocated segments).
set -euo pipefail
bin=${1:-target/release}
partitions=${2:-10000}
source "$(dirname "$0")/scratch.sh"
scratch_dir config-bench 2
broker=127.0.0.1:21590

"$bin/spate" serve --cores 0 --data-dir "$dir/data" --listen "$broker" \
  --kafka-listener 127.0.0.1:21591 --metrics-listener off \
  --set max.broker.partitions=$((partitions + 100)) >"$dir/log" 2>&1 &
pid=$!
disown
until "$bin/spate" topic list -b "$broker" >/dev/null 2>&1; do still_running; sleep 0.2; done
per_topic=$((partitions / 10))
for t in $(seq 0 9); do
  "$bin/spate" topic create "many-$t" --partitions "$per_topic" -b "$broker" >/dev/null
done

median_ms() { # $1: what; the rest: the command, with {} replaced by 1 or 2 in turn
  local what=$1
  shift
  for i in $(seq 1 9); do
    local value=$((i % 2 + 1))
    local start end
    start=$(date +%s%N)
    "${@//\{\}/$value}" >/dev/null
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
  done | sort -n | sed -n 5p | awk -v what="$what" '{ printf "%s: %.1f ms\n", what, $1 / 1000 }'
}

echo "$partitions partitions in 10 topics, one shard"
median_ms "no change" "$bin/spate" cluster config -b "$broker"
median_ms "cluster-wide log.retention.ms" \
  "$bin/spate" cluster config -b "$broker" --config "log.retention.ms={}000000"
median_ms "broker 0's own log.retention.ms" \
  "$bin/spate" cluster config -b "$broker" --node 0 --config "log.retention.ms={}000000"
median_ms "cluster-wide min.insync.replicas" \
  "$bin/spate" cluster config -b "$broker" --config "min.insync.replicas={}"
median_ms "one topic's retention.ms" \
  "$bin/spate" topic alter many-0 -b "$broker" --config "retention.ms={}000000"
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
pid=
