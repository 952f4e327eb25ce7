#!/usr/bin/env bash
# Compaction of a large log under load: how long `compact` takes and the p99 latency of
# concurrent requests while it runs, against p99 of the same load without compaction.
#
# 1. kvserver --fsync never, automatic compaction off; KEYS keys of VALUE bytes are written
#    and overwritten until database.txt is about LOG_MB MiB (live set ≈ KEYS × VALUE).
# 2. Baseline: kvbench 1:1 GET/SET mix, CONNS connections, no pipeline, BASE_SECS seconds.
# 3. The same load with `kvbench --compact-after 1`: it sends `compact` on another connection,
#    records latency during compaction separately, and stops a second after `OK`.
#
# Usage: bench/compaction.sh    (LOG_MB=1024 KEYS=200000 VALUE=1024 CONNS=8; 1-2 minutes)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
LOG_MB=${LOG_MB:-1024}
KEYS=${KEYS:-200000}
VALUE=${VALUE:-1024}
CONNS=${CONNS:-8}
BASE_SECS=${BASE_SECS:-5}
PORT=${PORT:-23611}
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver --bin kvbench)

stat_value() { # name: one value from `stats` over the line protocol
  exec 3<>"/dev/tcp/127.0.0.1/$PORT"
  printf 'stats\nquit\n' >&3
  timeout 10 cat <&3 | sed -n "s/^STAT $1 //p" | tr -d '\r'
  exec 3<&-
}

TEXTKV_EXTRA=(--compact-min-bytes 1000000000000000)
start_textkv "$PORT" "$BENCH_TMP/textkv" never
records=$(( LOG_MB * 1048576 / (VALUE + 26) ))
echo "filling: $KEYS keys, then $((records - KEYS)) overwrites of $VALUE B…" >&2
t0=$(date +%s)
"$KVBENCH" --protocol line --addr "127.0.0.1:$PORT" -c 8 -t 2 -P 32 --keys "$KEYS" --value-size "$VALUE" \
  --get-ratio 0 --prefill --requests "$(( records > KEYS ? records - KEYS : 1 ))" --duration 600 >/dev/null
db_bytes=$(stat_value db_bytes)
echo "filled in $(( $(date +%s) - t0 )) s: db_bytes=$db_bytes" >&2

load=(--protocol line --addr "127.0.0.1:$PORT" -c "$CONNS" -t "$(( CONNS < 2 ? CONNS : 2 ))" --keys "$KEYS"
  --value-size "$VALUE" --get-ratio 0.5)
base=$("$KVBENCH" "${load[@]}" --duration "$BASE_SECS")
during=$("$KVBENCH" "${load[@]}" --duration 600 --compact-after 1)
after_bytes=$(stat_value db_bytes)
stop_server

p99_base=$(field p99_us "$base")
p99_during=$(field compaction_p99_us "$during")
echo
echo "## Compaction of a $(( db_bytes / 1048576 )) MiB log under load ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Live set $KEYS keys x $VALUE B; load: 1:1 GET/SET, $CONNS connections, no pipeline."
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| log before / after compaction (bytes) | $db_bytes / $after_bytes |"
echo "| compaction time (ms) | $(field compaction_ms "$during") |"
echo "| requests answered during compaction | $(field compaction_ops "$during") |"
echo "| p50 / p99 / p99.9 / max during compaction (us) | $(field compaction_p50_us "$during") / $p99_during / $(field compaction_p999_us "$during") / $(field compaction_max_us "$during") |"
echo "| p50 / p99 / p99.9 without compaction, baseline run (us) | $(field p50_us "$base") / $p99_base / $(field p999_us "$base") |"
echo "| p99 outside compaction, same run (us) | $(field p99_us "$during") |"
echo "| ops/s baseline / compaction run | $(field ops_per_sec "$base") / $(field ops_per_sec "$during") |"
echo "| p99 during / p99 baseline (target <= 2) | $(awk -v a="$p99_during" -v b="$p99_base" 'BEGIN {printf "%.2f", a / b}') |"
