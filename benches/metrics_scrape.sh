#!/usr/bin/env bash
# What /metrics costs (issue 17), in one run on this machine:
#   1. one broker on one core (--cores 0) holding PARTITIONS partitions (10 topics);
#   2. a scrape of the idle broker: its time and size, with and without the per-partition series
#      (metrics.partition.series);
#   3. produce throughput with the load generator on the other core (4 partitions, 1 KiB
#      records, acks=1, 10 s), once with nobody scraping and once scraped every second, in
#      alternation, ROUNDS times; the scrape times under load.
#
#   cargo build --release && benches/metrics_scrape.sh [target/release] [partitions] [rounds]
#
# Uses ports 21490-21492 and a temporary directory beside the repository, both cleaned up on
# exit; needs 20 GiB free (each 10 s run writes up to 15 GB, deleted before the next).
set -euo pipefail
bin=${1:-target/release}
partitions=${2:-10000}
rounds=${3:-3}
source "$(dirname "$0")/scratch.sh"
scratch_dir metrics-bench 20
url=http://127.0.0.1:21492/metrics

start() { # $1: metrics.partition.series
  "$bin/spate" serve --cores 0 --data-dir "$dir/data" --listen 127.0.0.1:21490 \
    --kafka-listener 127.0.0.1:21491 --metrics-listener 127.0.0.1:21492 \
    --set "metrics.partition.series=$1" --set max.broker.partitions=$((partitions + 100)) \
    >"$dir/log" 2>&1 &
  pid=$!
  disown
  until "$bin/spate" topic list -b 127.0.0.1:21490 >/dev/null 2>&1; do still_running; sleep 0.2; done
}
stop() {
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  pid=
}
scrape() { # seconds and bytes of one scrape
  curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$url"
}
idle_scrapes() { # the median of 9 scrapes of the idle broker
  for _ in $(seq 1 9); do scrape; done | sort -n | sed -n 5p |
    awk -v what="$1" '{ printf "idle scrape, %s: %.1f ms, %.0f KiB\n", what, $1 * 1000, $2 / 1024 }'
}
produce() { # into topic $1, deleted after: each run writes ~15 GB
  "$bin/spate-loadgen" --cores 1 -b 127.0.0.1:21490 --topic "$1" --partitions 4 \
    --duration-secs 10 --skip-consume --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["produce"]["mib_per_sec"])'
  "$bin/spate" topic delete "$1" -b 127.0.0.1:21490 >/dev/null
}

start true
per_topic=$((partitions / 10))
for t in $(seq 0 9); do
  "$bin/spate" topic create "many-$t" --partitions "$per_topic" -b 127.0.0.1:21490 >/dev/null
done
idle_scrapes "per-partition series on ($partitions partitions)"
for round in $(seq 1 "$rounds"); do
  quiet=$(produce "quiet-$round")
  : >"$dir/scrapes"
  (while true; do scrape >>"$dir/scrapes"; sleep 1; done) &
  scraper=$!
  pids=("$scraper")
  scraped=$(produce "scraped-$round")
  kill "$scraper"
  wait "$scraper" 2>/dev/null || true
  pids=()
  times=$(awk '{ print $1 * 1000 }' "$dir/scrapes" | sort -n | tr '\n' ' ')
  echo "round $round: produce $quiet MiB/s unscraped, $scraped MiB/s scraped every second" \
    "(ratio $(python3 -c "print(f'{$scraped / $quiet:.3f}')")); scrape ms under load: $times"
done
stop
start false
idle_scrapes "per-partition series off"
stop
