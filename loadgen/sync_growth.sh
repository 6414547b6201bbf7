#!/usr/bin/env bash
# acks=all group commit at rising open-loop rates: records per fdatasync (from the broker's
# shutdown histograms), produce-ack and end-to-end latency. One shard on CPU 0, the loadgen on
# CPU 1, 1 KiB records in 64 KiB batches, 4 partitions, 8 s per rate.
# Usage: loadgen/sync_growth.sh [DIR] [RATES...]
set -euo pipefail
dir=${1:-/tmp/spate-sync-growth}
shift || true
rates=${*:-10000 50000 150000 300000 600000}
root=$(cd "$(dirname "$0")/.." && pwd)
port=19741
cargo build --release --workspace --quiet --manifest-path "$root/Cargo.toml"
spate="$root/target/release/spate"
loadgen="$root/target/release/spate-loadgen"
broker=""
trap 'if [[ -n $broker ]]; then kill -9 "$broker" 2>/dev/null || true; fi; rm -rf "$dir/data"' EXIT
mkdir -p "$dir"
printf '%-8s %-10s %-10s %-14s %-22s %s\n' rate records fdatasyncs records/sync "ack p50/p99 µs" "end-to-end p50/p99 µs"
for rate in $rates; do
  rm -rf "$dir/data"
  "$spate" serve --metrics-listener off --cores 0 --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --kafka-listener "127.0.0.1:$((port + 1))" > "$dir/serve.out" 2> "$dir/serve.err" &
  broker=$!
  sleep 2
  out=$("$loadgen" -b "127.0.0.1:$port" --cores 1 --topic sync --duration-secs 8 --tail \
    --rate "$rate" --batch-bytes 65536 --acks all)
  kill -TERM "$broker"
  wait "$broker" || true
  broker=""
  records=$(echo "$out" | sed -n 's/^produce: \([0-9]*\) records of.*/\1/p')
  syncs=$(awk '/^log.fdatasync/ {print $2}' "$dir/serve.out")
  ack=$(echo "$out" | sed -n 's/^produce: request latency µs  p50 \([0-9]*\) p90 [0-9]* p99 \([0-9]*\).*/\1 \/ \2/p')
  e2e=$(echo "$out" | sed -n 's/^consume: end-to-end µs  p50 \([0-9]*\) p90 [0-9]* p99 \([0-9]*\).*/\1 \/ \2/p')
  printf '%-8s %-10s %-10s %-14s %-22s %s\n' "$rate" "$records" "$syncs" "$((records / syncs))" "$ack" "$e2e"
done
