#!/usr/bin/env bash
# The write-path matrix (issue 11): textkv, memcached and Redis in one run, every server
# pinned to CPU 0 and kvbench to CPU 1, with the server's CPU time per operation measured
# from /proc/<pid>/stat around each cell. textkv is driven through its memcached listener,
# memcached through its own, Redis through RESP: each server's native text protocol.
#
#   bench/writes.sh                       the matrix, 3 s per cell
#   CELL_SECS=5 bench/writes.sh
#   OLD_KVSERVER=/path/to/kvserver bench/writes.sh   also run an older build (tk-old-*)
#
# Also prints the disk's own fdatasync rate (appending 64-byte records vs overwriting
# written blocks), the bound for `--fsync always`.
set -euo pipefail
RESULTS_TSV=${RESULTS_TSV:-/dev/null}
source "$(dirname "$0")/lib.sh"

CELL_SECS=${CELL_SECS:-3}
KEYS=${KEYS:-100000}
PORT=${PORT:-23511}
MC_PORT=${MC_PORT:-23512}
need memcached memcached
need redis-server redis-server
need taskset util-linux
echo "building release binaries…" >&2
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver --bin kvbench)

# cells: name workload(get|set|mix) bytes conns pipeline
NEVER_CELLS=(
  "get-32-c8 get 32 8 1"
  "set-32-c1 set 32 1 1"
  "set-32-c8 set 32 8 1"
  "set-1k-c8 set 1024 8 1"
  "set-32-c50-p16 set 32 50 16"
  "mix-32-c50-p16 mix 32 50 16"
)
ALWAYS_CELLS=(
  "set-32-c1 set 32 1 1"
  "set-32-c8 set 32 8 1"
  "set-32-c50 set 32 50 1"
)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)

# run NAME PROTOCOL PORT PID CELLS...
run() {
  local name=$1 proto=$2 port=$3 pid=$4 cell words before after line ops us
  shift 4
  for size in 32 1024; do
    "$KVBENCH" --protocol "$proto" --addr "127.0.0.1:$port" -c 8 -t 2 -P 32 --keys "$KEYS" \
      --value-size "$size" --duration 0 --prefill --seed 1 >/dev/null
  done
  for cell in "$@"; do
    read -r -a words <<<"$cell"
    local ratio
    case ${words[1]} in get) ratio=1 ;; set) ratio=0 ;; mix) ratio=0.5 ;; esac
    local threads=$(( words[3] < 2 ? words[3] : 2 ))
    before=$(ticks "$pid")
    line=$(taskset -c 1 "$KVBENCH" --protocol "$proto" --addr "127.0.0.1:$port" -c "${words[3]}" -t "$threads" \
      -P "${words[4]}" --keys "$KEYS" --value-size "${words[2]}" --get-ratio "$ratio" --duration "$CELL_SECS" --seed 2)
    after=$(ticks "$pid")
    ops=$(field ops_per_sec "$line")
    us=$(awk -v t=$((after - before)) -v clk="$CLK" -v ops="$ops" -v s="$CELL_SECS" \
      'BEGIN { printf "%.2f", (ops > 0) ? t / clk * 1e6 / (ops * s) : 0 }')
    printf '| %s | %s | %.0f | %s | %s |\n' "$name" "${words[0]}" "$ops" "$us" "$(field p99_us "$line")"
  done
}



echo
echo "## write path, $(date -u '+%Y-%m-%d %H:%M UTC'), ${CELL_SECS} s per cell, server on CPU 0, kvbench on CPU 1"
echo
echo "| server | cell | ops/s | server CPU µs/op | p99 µs |"
echo "|---|---|---:|---:|---:|"

user=()
[ "$(id -u)" = 0 ] && user=(-u root)
taskset -c 0 memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t 2 -m 2048 -c 4096 "${user[@]}" &
SERVER_PID=$!; STARTED_PIDS+=("$SERVER_PID"); wait_ready memcached "$MC_PORT"
run memcached memcached "$MC_PORT" "$SERVER_PID" "${NEVER_CELLS[@]}"
stop_server

for mode in none always; do
  dir="$BENCH_TMP/redis-$mode"; mkdir -p "$dir"
  persist=(--appendonly no)
  [ "$mode" = always ] && persist=(--appendonly yes --appendfsync always)
  taskset -c 0 redis-server --bind 127.0.0.1 --port "$PORT" --dir "$dir" --save '' --daemonize no \
    --logfile "$dir/redis.log" --maxclients 4096 "${persist[@]}" &
  SERVER_PID=$!; STARTED_PIDS+=("$SERVER_PID"); wait_ready resp "$PORT"
  if [ "$mode" = none ]; then run redis resp "$PORT" "$SERVER_PID" "${NEVER_CELLS[@]}"
  else run redis-always resp "$PORT" "$SERVER_PID" "${ALWAYS_CELLS[@]}"; fi
  stop_server
done

builds=("tk:$KVSERVER")
[ -n "${OLD_KVSERVER:-}" ] && builds+=("tk-old:$OLD_KVSERVER")
for build in "${builds[@]}"; do
  label=${build%%:*} binary=${build#*:}
  for fsync in never always; do
    dir="$BENCH_TMP/$label-$fsync"; mkdir -p "$dir"
    RUST_LOG=warn taskset -c 0 "$binary" --db "$dir/database.txt" --listen "127.0.0.1:$PORT" \
      --memcached "127.0.0.1:$MC_PORT" --fsync "$fsync" 2>>"$dir/kvserver.log" &
    SERVER_PID=$!; STARTED_PIDS+=("$SERVER_PID"); wait_ready memcached "$MC_PORT"
    if [ "$fsync" = never ]; then run "$label-never" memcached "$MC_PORT" "$SERVER_PID" "${NEVER_CELLS[@]}"
    else run "$label-always" memcached "$MC_PORT" "$SERVER_PID" "${ALWAYS_CELLS[@]}"; fi
    stop_server
    rm -rf "$dir"
  done
done

echo
echo "Disk alone (64-byte records, one pwrite + fdatasync each, 3 s, in $BENCH_TMP):"
python3 - "$BENCH_TMP" <<'EOF'
import os, sys, time
def rate(path, overwrite):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if overwrite:
        os.write(fd, b"\0" * (64 << 20)); os.fdatasync(fd)
    buf, off, n, end = b"x" * 63 + b"\n", 0, 0, time.time() + 3
    while time.time() < end:
        os.pwrite(fd, buf, off); off += 64; os.fdatasync(fd); n += 1
    os.close(fd); os.unlink(path)
    return n / 3
d = sys.argv[1]
print(f"- appending: {rate(d + '/a', False):.0f} fdatasync/s")
print(f"- overwriting written blocks: {rate(d + '/o', True):.0f} fdatasync/s")
EOF
