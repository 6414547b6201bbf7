#!/usr/bin/env bash
# Round trip through Spate's Kafka listener with kcat (Debian's kcat 1.7.1 on librdkafka 2.0.2).
#
# Checks: `kcat -L` lists the broker and the (auto-created) topic; 10,000 records with distinct
# keys and values (some with NUL, tab, CR, 0xff and UTF-8 bytes), headers (-H) and several
# compression codecs produced with `kcat -P -K`; `kcat -C -e -o beginning` prints exactly what was
# sent (partition, offset, key, headers, value); `-o end` prints nothing; `-o <offset>` starts at
# that offset; `-o -<n>` starts n before the end; `-o s@<ms>` starts at the first record at or
# after a timestamp.
#
# Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
set -uo pipefail
export LC_ALL=C

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

: "${SPATE_KAFKA:?set SPATE_KAFKA=host:port}"
command -v kcat >/dev/null || fail "kcat is not installed (apt-get install kcat)"
topic=${SPATE_TOPIC:-kcat-$$-$(date +%s%N)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
SECONDS=0
BUDGET=55 # every kcat run is cut off so that the whole script stays under 60 s
echo "kcat $(kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\).*librdkafka \([^ ]*\).*/\1 (librdkafka \2)/p'), bootstrap $SPATE_KAFKA, topic $topic"

B=(-b "$SPATE_KAFKA" -X socket.timeout.ms=10000)
# kcat with a time limit; stderr kept for the failure message.
k() {
  local left=$((BUDGET - SECONDS))
  ((left > 0)) || fail "ran out of time ($BUDGET s budget)"
  timeout $((left < 20 ? left : 20)) kcat "${B[@]}" "$@" 2>>"$work/kcat.err"
}
kfail() { fail "$* (kcat stderr: $(tail -c 2000 "$work/kcat.err"))"; }

# --- Metadata (auto-creates the topic) --------------------------------------------------------
k -L -t "$topic" >"$work/meta" || kfail "kcat -L -t $topic failed"
grep -q "broker [0-9]* at $SPATE_KAFKA" "$work/meta" ||
  fail "kcat -L does not list a broker at $SPATE_KAFKA: $(cat "$work/meta")"
P=$(sed -n "s/.*topic \"$topic\" with \([0-9]*\) partitions.*/\1/p" "$work/meta")
[[ -n $P && $P -ge 1 ]] || fail "kcat -L does not list topic $topic: $(cat "$work/meta")"
[[ $(grep -c "partition [0-9]*, leader [0-9]" "$work/meta") == "$P" ]] ||
  fail "kcat -L: not every partition has a leader: $(cat "$work/meta")"
k -L >"$work/meta-all" || kfail "kcat -L failed"
grep -q "topic \"$topic\" with $P partitions" "$work/meta-all" ||
  fail "kcat -L (all topics) does not list $topic: $(cat "$work/meta-all")"
ok "kcat -L lists broker $SPATE_KAFKA and topic $topic with $P partition(s)"

# --- Produce 10,000 records -------------------------------------------------------------------
# Record i goes to partition i % P at offset i / P. Within each partition the first half is
# produced with header set A, the second with header set B (kcat's -H applies to a whole run).
N=10000
H_A=(-H "chunk=a" -H "odd=ä"$'\x01'"ü" -H "spaced=x y")
H_A_OUT="chunk=a,odd=ä"$'\x01'"ü,spaced=x y"
H_B=(-H "chunk=b" -H "empty=")
H_B_OUT="chunk=b,empty="
for ((i = 0; i < N; i++)); do
  p=$((i % P)) j=$((i / P))
  per=$(((N - p + P - 1) / P))
  if ((j < per / 2)); then half=a hout=$H_A_OUT; else half=b hout=$H_B_OUT; fi
  key="key-$i"
  printf -v pad '%*s' $((i % 40)) ''
  value="value-$i-${pad// /x}"
  ((i % 97 == 3)) && key=$'\x01\xff\x7f'"$key"
  ((i % 89 == 4)) && key="ключ-$i"
  ((i % 101 == 5)) && value="tab"$'\t'"cr"$'\r'"hi"$'\xfe\xff'"-$i"
  ((i % 103 == 6)) && value=""
  if ((i % 107 == 7)); then
    # A NUL byte cannot live in a bash variable: write it with printf.
    printf '%s\t%s\0%s\n' "$key" "nul" "-$i" >>"$work/in.$p.$half"
    printf '%s\t%s\t%s\t%s\t%s\0%s\n' "$p" "$j" "$key" "$hout" "nul" "-$i" >>"$work/expected.$p"
    continue
  fi
  printf '%s\t%s\n' "$key" "$value" >>"$work/in.$p.$half"
  printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$j" "$key" "$hout" "$value" >>"$work/expected.$p"
done
codecs=(none gzip snappy lz4 zstd)
c=0
for ((p = 0; p < P; p++)); do
  for half in a b; do
    [[ -s $work/in.$p.$half ]] || continue
    codec=${codecs[c % ${#codecs[@]}]}
    c=$((c + 1))
    if [[ $half == a ]]; then hdr=("${H_A[@]}"); else hdr=("${H_B[@]}"); fi
    k -P -t "$topic" -p "$p" -K $'\t' "${hdr[@]}" -X compression.codec="$codec" \
      -X enable.idempotence=true <"$work/in.$p.$half" ||
      kfail "kcat -P (partition $p, headers $half, $codec) failed"
  done
done
grep -q "Delivery failed\|ERROR" "$work/kcat.err" && kfail "kcat -P reported errors"
ok "kcat -P produced $N records with -K and -H (codecs ${codecs[*]}, idempotent)"

# --- Consume everything from the beginning -----------------------------------------------------
for ((p = 0; p < P; p++)); do cat "$work/expected.$p"; done >"$work/expected"
k -C -t "$topic" -o beginning -e -f '%p\t%o\t%k\t%h\t%s\n' >"$work/got.raw" ||
  kfail "kcat -C -o beginning -e failed after $(wc -l <"$work/got.raw") lines"
sort -t $'\t' -k1,1n -k2,2n -s "$work/got.raw" >"$work/got"
if ! cmp -s "$work/expected" "$work/got"; then
  echo "first differences (expected < > got):" >&2
  diff <(cat -v "$work/expected") <(cat -v "$work/got") | head -20 >&2
  fail "kcat -C -o beginning output differs from what was produced ($(wc -l <"$work/got") of $N lines)"
fi
ok "kcat -C -o beginning -e read all $N records back: partition, offset, key, headers, value exact"

# --- -o end prints nothing new ----------------------------------------------------------------
k -C -t "$topic" -o end -e -f '%p %o\n' >"$work/end" || kfail "kcat -C -o end -e failed"
[[ ! -s $work/end ]] || fail "kcat -C -o end -e printed records: $(head -3 "$work/end")"
ok "kcat -C -o end -e prints nothing"

# --- -o <offset> and -o -<n> ------------------------------------------------------------------
n0=$(((N + P - 1) / P))
start=$((n0 - 123))
k -C -t "$topic" -p 0 -o "$start" -e -f '%o\n' >"$work/from" || kfail "kcat -C -o $start failed"
[[ $(head -1 "$work/from") == "$start" && $(tail -1 "$work/from") == $((n0 - 1)) &&
  $(wc -l <"$work/from") == 123 ]] ||
  fail "kcat -C -p 0 -o $start: got offsets $(head -1 "$work/from")..$(tail -1 "$work/from") ($(wc -l <"$work/from") records), expected $start..$((n0 - 1))"
ok "kcat -C -p 0 -o $start starts at offset $start"
k -C -t "$topic" -p 0 -o -7 -e -f '%o\n' >"$work/tail" || kfail "kcat -C -o -7 failed"
[[ $(head -1 "$work/tail") == $((n0 - 7)) && $(wc -l <"$work/tail") == 7 ]] ||
  fail "kcat -C -p 0 -o -7: got $(tr '\n' ' ' <"$work/tail"), expected $((n0 - 7))..$((n0 - 1))"
ok "kcat -C -p 0 -o -7 starts 7 records before the end"

# --- -o s@<ms>: timestamp lookup ---------------------------------------------------------------
# kcat -P reads stdin in blocks, so one run's records share a timestamp: each group is its own
# run. (A lookup inside a batch is checked by the Python scripts' offsets_for_times.)
for ((p = 0; p < P; p++)); do
  printf 'g1-%s-%s\tfirst group\n' "$p" 0 "$p" 1 "$p" 2 | k -P -t "$topic" -p "$p" -K $'\t' ||
    kfail "kcat -P (first group) failed"
done
sleep 1.2
ts=$(date +%s%3N)
sleep 0.05
for ((p = 0; p < P; p++)); do
  printf 'g2-%s-%s\tsecond group\n' "$p" 0 "$p" 1 | k -P -t "$topic" -p "$p" -K $'\t' ||
    kfail "kcat -P (second group) failed"
done
k -C -t "$topic" -o "s@$ts" -e -f '%p\t%o\t%k\n' | sort -t $'\t' -k1,1n -k2,2n >"$work/since" ||
  kfail "kcat -C -o s@$ts failed"
for ((p = 0; p < P; p++)); do
  per=$(((N - p + P - 1) / P))
  printf '%s\t%s\tg2-%s-0\n%s\t%s\tg2-%s-1\n' "$p" $((per + 3)) "$p" "$p" $((per + 4)) "$p"
done >"$work/since.expected"
if ! cmp -s "$work/since.expected" "$work/since"; then
  fail "kcat -C -o s@$ts should start at the second group in every partition; got:
$(head -20 "$work/since")
expected:
$(cat "$work/since.expected")"
fi
ok "kcat -C -o s@$ts starts at the first record at/after the timestamp in every partition"
echo "PASS kcat_roundtrip"
