#!/usr/bin/env bash
# An older kvserver build against this one, alternated cell by cell, three rounds, each
# server pinned to CPU 0 and kvbench to CPU 1, through the memcached listener (100,000 keys,
# 3 s per cell). Prints TSV: build, cell, ops/s, server CPU µs per operation.
#   OLD=/path/to/old/kvserver bench/ab_writes.sh > ab.tsv
#   ROUNDS=7 ONLY=always OLD=... bench/ab_writes.sh   more rounds, only cells whose name matches
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KB=${KVBENCH:-$ROOT/target/release/kvbench}
NEW=${NEW:-$ROOT/target/release/kvserver}
OLD=${OLD:?OLD=path to the older kvserver}
WORK=$(mktemp -d)
PID=""
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-}
cell() { # build binary fsync name get-ratio conns pipeline
  [[ "$4" == *"$ONLY"* ]] || return 0
  rm -rf "$WORK/db"; mkdir "$WORK/db"
  RUST_LOG=warn taskset -c 0 "$2" --db "$WORK/db/database.txt" --listen 127.0.0.1:23800 \
    --memcached 127.0.0.1:23801 --fsync "$3" 2>/dev/null &
  PID=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/23801) 2>/dev/null && break; sleep 0.1; done
  "$KB" --protocol memcached --addr 127.0.0.1:23801 -c 8 -t 2 -P 32 --keys 100000 --duration 0 --prefill >/dev/null
  local before after ops
  before=$(ticks "$PID")
  ops=$(taskset -c 1 "$KB" --protocol memcached --addr 127.0.0.1:23801 -c "$6" -t $(( $6 < 2 ? $6 : 2 )) -P "$7" \
    --keys 100000 --get-ratio "$5" --duration 3 | tr ' ' '\n' | sed -n 's/^ops_per_sec=//p')
  after=$(ticks "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  printf '%s\t%s\t%s\t%s\n' "$1" "$4" "$ops" "$(awk -v t=$((after - before)) -v o="$ops" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz * 1e6 / (o * 3) }')"
}
for _ in $(seq "$ROUNDS"); do
  for build in "old:$OLD" "new:$NEW"; do
    name=${build%%:*} bin=${build#*:}
    cell "$name" "$bin" never get-c8 1 8 1
    cell "$name" "$bin" never set-c1 0 1 1
    cell "$name" "$bin" never set-c8 0 8 1
    cell "$name" "$bin" never set-c50p16 0 50 16
    cell "$name" "$bin" never mix-c50p16 0.5 50 16
    cell "$name" "$bin" always always-set-c1 0 1 1
    cell "$name" "$bin" always always-set-c8 0 8 1
    cell "$name" "$bin" always always-set-c50 0 50 1
  done
done
