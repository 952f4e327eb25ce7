#!/usr/bin/env bash
# memcached's binary protocol vs its ASCII protocol on textkv, next to memcached 1.6's binary
# (and ASCII), with the same load generator for all: libmemcached's memcslap, one
# synchronous request at a time per connection, at 8 and 50 connections. The server is
# pinned to CPU 0, memcslap to CPU 1. textkv runs with --fsync never so that the protocols,
# not the disk, are compared (with --fsync always every set waits for an fsync).
#
#   bench/memcached_binary.sh [ops-per-run]     # default 200000 operations per run
#
# Prints one markdown table: operations per second of `memcslap --test=set` and `--test=get`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need memcached memcached
need memcslap libmemcached-tools
need taskset util-linux
OPS=${1:-200000}
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver)

# memcslap <port> <connections> <set|get> [--binary] → operations per second.
slap() {
  local port=$1 conns=$2 test=$3 mode=${4:-}
  local per=$(( OPS / conns )) seconds
  seconds=$(taskset -c 1 memcslap --servers="127.0.0.1:$port" --concurrency="$conns" \
      --execute-number="$per" --test="$test" $mode 2>&1 |
    sed -n "s/^Time to $test .* \([0-9.]*\) seconds\.$/\1/p" | tail -1)
  [ -n "$seconds" ] || { echo "memcslap gave no time" >&2; exit 1; }
  awk -v n=$(( per * conns )) -v s="$seconds" 'BEGIN { printf "%.0f", n / s }'
}

run() { # label port
  local label=$1 port=$2 row="| $1"
  for mode in "" --binary; do
    for conns in 8 50; do
      for test in set get; do
        row="$row | $(slap "$port" "$conns" "$test" "$mode")"
      done
    done
  done
  echo "$row |"
}

echo "| server | ASCII set, 8 conns | ASCII get, 8 | ASCII set, 50 | ASCII get, 50 | binary set, 8 | binary get, 8 | binary set, 50 | binary get, 50 |"
echo "|---|---|---|---|---|---|---|---|---|"
start_textkv 23101 "$BENCH_TMP/textkv" never 23102
taskset -a -pc 0 "$SERVER_PID" >/dev/null
run "textkv (--fsync never)" 23102
stop_server
start_memcached 23103
taskset -a -pc 0 "$SERVER_PID" >/dev/null
run "memcached $(memcached -V | cut -d' ' -f2)" 23103
stop_server
