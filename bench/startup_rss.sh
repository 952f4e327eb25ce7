#!/usr/bin/env bash
# Memory per key and start-up (recovery) time with N keys (default 1,000,000) of 32 B values.
#
# RSS per key: VmRSS (/proc/PID/status) after loading N keys with kvbench --prefill, minus
# VmRSS of the empty server, divided by N; for textkv, memcached and Redis (no persistence).
# Start-up: the same N keys written to textkv (--fsync never) and to Redis with an
# append-only file (appendonly yes, aof-use-rdb-preamble no, automatic rewrites off, so the
# AOF holds the N SET commands just as database.txt holds N set lines); both are stopped
# cleanly and restarted on the same data, and the time from exec until the server answers a
# request (Redis: PING answered PONG, not -LOADING) is measured. RSS after the restart is
# reported too.
#
# Usage: bench/startup_rss.sh        (N=1000000 VALUE=32; about a minute)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${N:-1000000}
VALUE=${VALUE:-32}
need memcached memcached
need redis-server redis-server
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver --bin kvbench)
PORT=${PORT:-23511}
export RUST_LOG=info   # kvserver logs its load time at info

fill() { # protocol port
  "$KVBENCH" --protocol "$1" --addr "127.0.0.1:$2" -c 4 -t 2 -P 64 --keys "$N" --value-size "$VALUE" \
    --duration 0 --prefill >/dev/null
}
now_ms() { date +%s%3N; }
per_key() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN {printf "%.1f", (b - a) * 1024 / n}'; }
ROWS=()

# memcached
start_memcached "$PORT" 4096
base=$(rss_kb "$SERVER_PID"); fill memcached "$PORT"; full=$(rss_kb "$SERVER_PID")
ROWS+=("| memcached 1.6 (-m 4096) | $base | $full | $(per_key "$base" "$full") | - | - |")
stop_server

# Redis: fill with an AOF, restart, time the AOF load.
REDIS_EXTRA=(--aof-use-rdb-preamble no --auto-aof-rewrite-percentage 0)
start_redis "$PORT" "$BENCH_TMP/redis" everysec
base=$(rss_kb "$SERVER_PID"); fill resp "$PORT"; full=$(rss_kb "$SERVER_PID")
stop_server
aof_bytes=$(du -cb "$BENCH_TMP/redis/appendonlydir" | tail -1 | cut -f1)
t0=$(now_ms); READY_LIMIT=300 start_redis "$PORT" "$BENCH_TMP/redis" everysec; t1=$(now_ms)
again=$(rss_kb "$SERVER_PID")
ROWS+=("| Redis 7 (AOF, $aof_bytes bytes) | $base | $full | $(per_key "$base" "$full") | $((t1 - t0)) | $again |")
redis_ms=$((t1 - t0))
stop_server
rm -rf "$BENCH_TMP/redis"
REDIS_EXTRA=()

# textkv
start_textkv "$PORT" "$BENCH_TMP/textkv" never
base=$(rss_kb "$SERVER_PID"); fill line "$PORT"; full=$(rss_kb "$SERVER_PID")
stop_server
db_bytes=$(stat -c %s "$BENCH_TMP/textkv/database.txt")
t0=$(now_ms); READY_LIMIT=300 start_textkv "$PORT" "$BENCH_TMP/textkv" never; t1=$(now_ms)
again=$(rss_kb "$SERVER_PID")
ROWS+=("| textkv (database.txt, $db_bytes bytes) | $base | $full | $(per_key "$base" "$full") | $((t1 - t0)) | $again |")
textkv_ms=$((t1 - t0))
loaded=$(grep -o 'loaded in [0-9]* ms' "$BENCH_TMP/textkv/kvserver.log" | tail -1 || true)
stop_server

echo
echo "## Memory and start-up with $N keys of $VALUE B ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| server | RSS empty (kB) | RSS full (kB) | bytes per key | restart until serving (ms) | RSS after restart (kB) |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "textkv start-up / Redis AOF load: $(awk -v a="$textkv_ms" -v b="$redis_ms" 'BEGIN {printf "%.2f", a / b}') (kvserver log: ${loaded:-n/a})"
