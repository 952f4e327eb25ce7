#!/usr/bin/env bash
# Checks kvbench against the reference tools on the same workload, same server, same machine:
#   memcached: kvbench --protocol memcached   vs  memcaslap (Debian libmemcached-tools)
#   Redis:     kvbench --protocol resp        vs  redis-benchmark (Debian redis-tools)
# kvbench runs with as many threads as the reference tool (memcaslap -T, redis-benchmark's one
# event loop), so both clients spend about the same CPU on this 2-core machine.
# The runs of the two tools alternate (REPEATS times each) so that drift in the machine's
# load hits both alike; medians are printed as a markdown table.
#
# Usage: bench/validate.sh            (REPEATS=3 CELL_SECS=3 by default; ~2.5 minutes)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
REPEATS=${REPEATS:-3}
CELL_SECS=${CELL_SECS:-3}
need memcached memcached; need memcaslap libmemcached-tools
need redis-server redis-server; need redis-benchmark redis-tools
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvbench)

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }

ROWS=()
row() { # label kvbench-median reference-median
  local ratio
  ratio=$(awk -v a="$2" -v b="$3" 'BEGIN {printf "%.2f", a/b}')
  ROWS+=("| $1 | $2 | $3 | $ratio |")
}

# ---- memcached: 90% GET / 10% SET (memcaslap's default mix), 32 B values ----
MC_PORT=21311
start_memcached "$MC_PORT"
cat >"$BENCH_TMP/memcaslap.cfg" <<CFG
key
17 17 1
value
32 32 1
cmd
0 0.1
1 0.9
CFG
for conns in 1 8 50; do
  threads=$(( conns < 2 ? 1 : 2 ))
  win=$(( 100000 / conns / 1000 ))k   # keys = concurrency x window
  keys=$(( conns * (100000 / conns / 1000) * 1000 ))
  "$KVBENCH" --protocol memcached --addr 127.0.0.1:$MC_PORT -c "$conns" --keys "$keys" --duration 0 --prefill >/dev/null
  kv=(); ref=()
  for _ in $(seq "$REPEATS"); do
    line=$("$KVBENCH" --protocol memcached --addr 127.0.0.1:$MC_PORT -c "$conns" -t "$threads" --keys "$keys" \
      --get-ratio 0.9 --value-size 32 --duration "$CELL_SECS")
    kv+=("$(field ops_per_sec "$line")")
    out=$(timeout $((CELL_SECS + 60)) memcaslap -s 127.0.0.1:$MC_PORT -F "$BENCH_TMP/memcaslap.cfg" \
      -T "$threads" -c "$conns" -w "$win" -t "${CELL_SECS}s" 2>&1 | grep '^Run time')
    ref+=("$(sed -n 's/.*TPS: \([0-9]*\).*/\1/p' <<<"$out")")
  done
  echo "memcached c=$conns: kvbench ${kv[*]} | memcaslap ${ref[*]}" >&2
  row "memcached, 90% GET, 32 B, $conns conn, no pipeline (kvbench -t $threads vs memcaslap -T $threads -c $conns)" \
    "$(printf '%s\n' "${kv[@]}" | median)" "$(printf '%s\n' "${ref[@]}" | median)"
done
stop_server

# ---- Redis (no persistence): SET only and GET only, 32 B values, 100k keys ----
R_PORT=26479
start_redis "$R_PORT" "$BENCH_TMP/redis" none
"$KVBENCH" --protocol resp --addr 127.0.0.1:$R_PORT -c 8 --keys 100000 --duration 0 --prefill >/dev/null
for cell in "8 1" "50 1" "50 16"; do
  set -- $cell
  conns=$1 pipe=$2
  for test in set get; do
    ratio=$([ $test = get ] && echo 1 || echo 0)
    # Enough requests for about CELL_SECS seconds at the rate kvbench sees.
    kv=(); ref=()
    for _ in $(seq "$REPEATS"); do
      line=$("$KVBENCH" --protocol resp --addr 127.0.0.1:$R_PORT -c "$conns" -t 1 -P "$pipe" --keys 100000 \
        --get-ratio "$ratio" --value-size 32 --duration "$CELL_SECS")
      rate=$(field ops_per_sec "$line")
      kv+=("$rate")
      n=$(( rate * CELL_SECS ))
      out=$(timeout $((CELL_SECS * 4 + 60)) redis-benchmark -h 127.0.0.1 -p $R_PORT -c "$conns" -P "$pipe" \
        -n "$n" -d 32 -r 100000 -t "$test" --csv | tail -1)
      ref+=("$(awk -F'"' '{printf "%.0f", $4}' <<<"$out")")
    done
    echo "redis $test c=$conns P=$pipe: kvbench ${kv[*]} | redis-benchmark ${ref[*]}" >&2
    row "Redis, $(tr a-z A-Z <<<$test) only, 32 B, $conns conn, pipeline $pipe (kvbench -t 1 vs redis-benchmark)" \
      "$(printf '%s\n' "${kv[@]}" | median)" "$(printf '%s\n' "${ref[@]}" | median)"
  done
done
stop_server

echo
echo "| workload | kvbench ops/s | reference ops/s | kvbench / reference |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
