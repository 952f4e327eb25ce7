#!/usr/bin/env bash
# Side-by-side A/B of kvserver builds or flags under `--fsync always` (issue 11 item 3,
# data-only fsyncs). Every variant's server is started once (all pinned to CPU 0, each on its
# own database) and kvbench (CPU 1) runs SECS-second SET cells against them in turn, PAIRS
# rounds, the order rotated each round, so a neighbour's load lands on every variant alike.
# Prints TSV (round, variant, conns, ops/s), then per conns the median ops/s of each variant
# and the median of its per-round ratio to the first variant. Two variants that are the same
# build and flags (an A/A pair) show how much of a difference is noise.
#   VARIANTS="old=/path/main/kvserver;new=/path/kvserver;new-0=/path/kvserver --prealloc-bytes 0" \
#     bench/prealloc_ab.sh
#   PAIRS=25 SECS=1 CONNS="1 8 50" VARIANTS=... bench/prealloc_ab.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KB=${KVBENCH:-$ROOT/target/release/kvbench}
VARIANTS=${VARIANTS:?VARIANTS=\"name=binary [flags];name=binary [flags];...\"}
PAIRS=${PAIRS:-15}
SECS=${SECS:-1}
CONNS=${CONNS:-1 8 50}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
IFS=';' read -r -a SPECS <<<"$VARIANTS"
NAMES=()
PORTS=()
port=23900
for spec in "${SPECS[@]}"; do
  name=${spec%%=*}
  read -r -a command <<<"${spec#*=}"
  mkdir "$WORK/$name"
  RUST_LOG=warn taskset -c 0 "${command[@]}" --db "$WORK/$name/database.txt" --listen "127.0.0.1:$port" \
    --memcached "127.0.0.1:$((port + 1))" --fsync always 2>"$WORK/$name.log" &
  PIDS+=($!)
  NAMES+=("$name")
  PORTS+=($((port + 1)))
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null && break; sleep 0.1; done
  port=$((port + 2))
done
n=${#NAMES[@]}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$PAIRS"); do
  for c in $CONNS; do
    for i in $(seq 0 $((n - 1))); do
      k=$(( (i + round) % n ))
      ops=$(taskset -c 1 "$KB" --protocol memcached --addr "127.0.0.1:${PORTS[$k]}" -c "$c" -t $(( c < 2 ? c : 2 )) \
        --keys 100000 --get-ratio 0 --duration "$SECS" | tr ' ' '\n' | sed -n 's/^ops_per_sec=//p')
      printf '%s\t%s\t%s\t%s\n' "$round" "${NAMES[$k]}" "$c" "$ops"
    done
  done
done | tee "$WORK/runs.tsv"
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/runs.tsv" "${NAMES[0]}" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]) if l.strip()]
base = sys.argv[2]
by = {}
for r, v, c, ops in rows:
    by.setdefault((int(c), v), {})[int(r)] = float(ops)
print("conns\tvariant\tmedian ops/s\tmedian ratio to " + base)
for c, v in sorted(by):
    runs = by[(c, v)]
    ratios = [runs[r] / by[(c, base)][r] for r in runs if by[(c, base)].get(r)]
    print(f"{c}\t{v}\t{st.median(runs.values()):.0f}\t{st.median(ratios):.2f}")
PY
