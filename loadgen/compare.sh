#!/usr/bin/env bash
# Measures the machine's own limits (fio O_DIRECT write/read/write+fdatasync, iperf3 loopback)
# and Spate through spate-loadgen in the same run, and prints each Spate figure as a ratio; the
# same acks=1 workload also runs through the Kafka listener, next to the native one.
# Usage: loadgen/compare.sh [DIR] [SECONDS]
# DIR must be on the disk to test. Each produce phase writes up to ~1.6 GB/s for SECONDS; the
# script refuses to start without room for both phases and deletes everything it wrote on exit.
set -euo pipefail
dir=${1:-/tmp/spate-compare}
secs=${2:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
port=19391
mkdir -p "$dir"
need_kib=$(( (3 * 1700 * secs + 8 * 1024) * 1024 ))
free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
if (( free_kib < need_kib )); then
  echo "need $((need_kib / 1048576)) GiB free in $dir for $secs s phases, have $((free_kib / 1048576)) GiB"
  exit 1
fi
broker=""
cleanup() {
  if [[ -n $broker ]]; then kill -9 "$broker" 2>/dev/null || true; fi
  rm -rf "$dir/data" "$dir/fio.dat"
}
trap cleanup EXIT
for tool in fio iperf3; do
  command -v "$tool" >/dev/null || { echo "install $tool first (apt-get install -y fio iperf3)"; exit 1; }
done
cargo build --release --workspace --quiet --manifest-path "$root/Cargo.toml"
spate="$root/target/release/spate"
loadgen="$root/target/release/spate-loadgen"

fio_mib() { # fio args... -> MiB/s of the job (write or read)
  fio --name=job --filename="$dir/fio.dat" --size=4G --ioengine=io_uring --direct=1 \
      --runtime=10 --time_based --output-format=json "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round((j["write"]["bw"]+j["read"]["bw"])/1024))'
}
fio_write=$(fio_mib --rw=write --bs=1M --iodepth=1)
# Spate's writer keeps up to two writes of up to log.flush.write.bytes.max (1 MiB) in flight per
# partition: the loadgen's 4 partitions make queue depth 8, the fair ceiling.
fio_write4=$(fio_mib --rw=write --bs=1M --iodepth=4)
fio_write8=$(fio_mib --rw=write --bs=1M --iodepth=8)
fio_read=$(fio_mib --rw=read --bs=512k --iodepth=4)
fio_sync=$(fio_mib --rw=write --bs=256k --iodepth=1 --fdatasync=1)
rm -f "$dir/fio.dat"
iperf3 -s -1 -p $((port + 1)) >/dev/null 2>&1 &
sleep 0.5
loop_mib=$(iperf3 -c 127.0.0.1 -p $((port + 1)) -t 5 -J |
  python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/1048576))')

rm -rf "$dir/data"
kport=$((port + 2))
"$spate" serve --metrics-listener off --data-dir "$dir/data" --listen "127.0.0.1:$port" --kafka-listener "127.0.0.1:$kport" \
  > "$dir/serve.out" 2> "$dir/serve.err" &
broker=$!
sleep 2
mib_of() { sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p' | head -1; }
run1=$("$loadgen" -b "127.0.0.1:$port" --topic acks1 --duration-secs "$secs" --acks 1 --threads 2)
echo "$run1"
runall=$("$loadgen" -b "127.0.0.1:$port" --topic acksall --duration-secs "$secs" --acks all --skip-consume --threads 2)
echo "$runall"
runkafka=$("$loadgen" --protocol kafka -b "127.0.0.1:$kport" --topic kafka1 --duration-secs "$secs" --acks 1 --threads 2)
echo "$runkafka"
kill -TERM "$broker"; wait "$broker" || true
broker=""
cat "$dir/serve.out"
produce1=$(echo "$run1" | grep '^produce: [0-9]' | mib_of)
consume1=$(echo "$run1" | grep '^consume: [0-9]' | mib_of)
produceall=$(echo "$runall" | grep '^produce: [0-9]' | mib_of)
producekafka=$(echo "$runkafka" | grep '^produce: [0-9]' | mib_of)
consumekafka=$(echo "$runkafka" | grep '^consume: [0-9]' | mib_of)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
lower=$(( fio_read < loop_mib ? fio_read : loop_mib ))
echo
echo "machine: fio O_DIRECT write 1 MiB qd1 $fio_write MiB/s, qd4 $fio_write4 MiB/s, qd8 $fio_write8 MiB/s, read 512 KiB qd4 $fio_read MiB/s, write 256 KiB + fdatasync $fio_sync MiB/s, iperf3 loopback $loop_mib MiB/s"
echo "spate produce acks=1   $produce1 MiB/s = $(ratio "$produce1" "$fio_write8") x fio write at qd8 ($(ratio "$produce1" "$fio_write4") x at qd4, $(ratio "$produce1" "$fio_write") x at qd1)"
echo "spate produce acks=all $produceall MiB/s = $(ratio "$produceall" "$fio_sync") x fio write+fdatasync"
echo "spate catch-up consume $consume1 MiB/s = $(ratio "$consume1" "$lower") x min(fio read, loopback)"
echo "kafka  produce acks=1   $producekafka MiB/s = $(ratio "$producekafka" "$produce1") x native"
echo "kafka  catch-up consume $consumekafka MiB/s = $(ratio "$consumekafka" "$consume1") x native"
