#!/usr/bin/env bash
# kvclient put / get of one large file (default 200 MiB) against a release kvserver, next to
# the disk's sequential write speed measured on the same filesystem with dd conv=fdatasync.
# Two files: random bytes (the worst case: most bytes travel and are stored as \xHH, ~2.6x)
# and base64 text (stored as it is but for `\n` escapes).
#
# The server runs pinned to CPU 0, kvclient to CPU 1. Prints the throughput of each step, the
# CPU seconds the server and kvclient spent on it (from /proc and GNU time: on a shared machine
# they move less than the wall clock), the client's peak RSS, and checks the download is
# byte-identical. KVSERVER=… KVCLIENT=… compare other builds (run them alternately).
#
# Usage: bench/files.sh                      (SIZE_MB=200 FSYNC=always; under a minute)
#        SIZE_MB=1000 FSYNC=never DIR=/mnt/disk bench/files.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIZE_MB=${SIZE_MB:-200}
FSYNC=${FSYNC:-always}
DIR=${DIR:-$BENCH_TMP}
PORT=${PORT:-23611}
KVCLIENT=${KVCLIENT:-$BENCH_ROOT/target/release/kvclient}
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver --bin kvclient)
mkdir -p "$DIR"
work=$(mktemp -d "$DIR/files-bench.XXXXXX")
STARTED_PIDS+=()
trap 'cleanup_all; rm -rf "$work"' EXIT

now_ns() { date +%s%N; }
mbps() { awk -v mb="$SIZE_MB" -v ns="$1" 'BEGIN {printf "%.0f", mb / (ns / 1e9)}'; }
peak_kb() { sed -n 's/^peak_kb=//p' "$1"; }
client_cpu() { awk '/^cpu=/ {sub("cpu=", ""); printf "%.2f", $1 + $2}' "$1"; }
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
cpu_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'; }

echo "disk: dd of $SIZE_MB MiB with conv=fdatasync in $DIR"
# The median of three runs: a virtual disk's write speed varies a lot from run to run.
runs=()
for _ in 1 2 3; do
  t0=$(now_ns)
  dd if=/dev/zero of="$work/dd.bin" bs=1M count="$SIZE_MB" conv=fdatasync status=none
  runs+=($(( $(now_ns) - t0 )))
  rm -f "$work/dd.bin"
done
disk_ns=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
echo "dd runs (ns): ${runs[*]}"

head -c "$((SIZE_MB << 20))" /dev/urandom >"$work/random.bin"
{ base64 -w 76 "$work/random.bin" || true; } | head -c "$((SIZE_MB << 20))" >"$work/text.bin"
start_textkv_pinned() {
  RUST_LOG=warn taskset -c 0 "$KVSERVER" --db "$work/database.txt" --listen "127.0.0.1:$PORT" \
    --fsync "$FSYNC" 2>>"$work/kvserver.log" &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_ready line "$PORT"
}
client() { /usr/bin/time -f $'peak_kb=%M\ncpu=%U %S' -o "$1" taskset -c 1 "$KVCLIENT" --addr "127.0.0.1:$PORT" "${@:2}"; }
ratio() { awk -v a="$disk_ns" -v b="$1" 'BEGIN {printf "%.2f", a / b}'; }

echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| $SIZE_MB MiB file, --fsync $FSYNC | MiB/s | vs disk | server CPU s | kvclient CPU s | kvclient peak RSS | database.txt |"
echo "|---|---|---|---|---|---|---|"
echo "| disk: dd bs=1M conv=fdatasync | $(mbps "$disk_ns") | 1.00 | - | - | - | - |"
for content in random text; do
  rm -f "$work/database.txt"
  start_textkv_pinned
  t0=$(now_ns) s0=$(server_ticks)
  client "$work/put.time" put "$work/$content.bin" "bench/$content.bin"
  put_ns=$(( $(now_ns) - t0 )) put_ticks=$(( $(server_ticks) - s0 ))
  t0=$(now_ns) s0=$(server_ticks)
  client "$work/get.time" get "bench/$content.bin" -o "$work/out.bin"
  get_ns=$(( $(now_ns) - t0 )) get_ticks=$(( $(server_ticks) - s0 ))
  cmp "$work/$content.bin" "$work/out.bin"
  db_mb=$(( $(stat -c %s "$work/database.txt") >> 20 ))
  echo "| $content: kvclient put | $(mbps "$put_ns") | $(ratio "$put_ns") | $(cpu_s "$put_ticks") | $(client_cpu "$work/put.time") | $(( $(peak_kb "$work/put.time") / 1024 )) MiB | $db_mb MiB |"
  echo "| $content: kvclient get -o (SHA-256 checked) | $(mbps "$get_ns") | $(ratio "$get_ns") | $(cpu_s "$get_ticks") | $(client_cpu "$work/get.time") | $(( $(peak_kb "$work/get.time") / 1024 )) MiB | |"
  stop_server
done
