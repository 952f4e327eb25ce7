#!/usr/bin/env bash
# Side-by-side throughput of textkv, memcached and Redis, all driven by kvbench with the same
# settings, on this machine, in one run. Prints one markdown table: per cell the median ops/s
# of every server and the ratios textkv/peer.
#
# Servers (each on 127.0.0.1 with its own temporary directory, stopped by PID at the end):
#   memcached        memcached -t 2 -m 2048
#   redis            Redis without persistence (--save '' --appendonly no)
#   redis-es         Redis --appendonly yes --appendfsync everysec
#   redis-al         Redis --appendonly yes --appendfsync always
#   tk-never|tk-es|tk-al   kvserver --fsync never|everysec|always; line listener (-line) and,
#                    if this kvserver has --memcached, its memcached listener (-mc)
# Cells: workload (get, set, mix = 1:1) x value size x connections x pipeline depth, each
# CELL_SECS long, REPEATS times; medians reported. Every server is prefilled with KEYS keys
# per value size (and read back with --verify) before its cells.
#
# Usage:
#   bench/compare.sh                     full matrix (36 cells x 10 servers, ~1 h with defaults)
#   QUICK=1 bench/compare.sh             tiny matrix (32 B; 1 conn, 8 conns, 8 conns x pipeline 16;
#                                        1 s, once), about 1.5 minutes
#   REPEATS=3 CELL_SECS=5 bench/compare.sh
#   SERVERS="redis-al tk-al" WORKLOADS=set SIZES=32 CONNS=50 PIPELINES=1 bench/compare.sh
#   CELLS="1:1 50:16" bench/compare.sh   (explicit connections:pipeline pairs)
# Other knobs: KEYS (100000), THREADS (client threads per run, max 2 by default: see
# bench/VALIDATION.md), RESULTS_TSV (keep the raw results), KEEP_TMP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ -n "${QUICK:-}" ]; then
  : "${WORKLOADS:=get set mix}" "${SIZES:=32}" "${CELLS:=1:1 8:1 8:16}"
  : "${CELL_SECS:=1}" "${REPEATS:=1}"
fi
WORKLOADS=${WORKLOADS:-get set mix}
SIZES=${SIZES:-32 1024}
CONNS=${CONNS:-1 8 50}
PIPELINES=${PIPELINES:-1 16}
# CELLS: "conns:pipeline" pairs; default every CONNS x PIPELINES combination.
if [ -z "${CELLS:-}" ]; then
  CELLS=""
  for c in $CONNS; do for p in $PIPELINES; do CELLS="$CELLS $c:$p"; done; done
fi
CELL_SECS=${CELL_SECS:-3}
REPEATS=${REPEATS:-3}
KEYS=${KEYS:-100000}
THREADS=${THREADS:-2}
SERVERS=${SERVERS:-memcached redis redis-es redis-al tk-never tk-es tk-al}
RESULTS_TSV=${RESULTS_TSV:-$BENCH_TMP/results.tsv}

need memcached memcached
need redis-server redis-server
echo "building release binaries…" >&2
(cd "$BENCH_ROOT" && cargo build --release --quiet --bin kvserver --bin kvbench)

MC_NOTE=""
if textkv_has_memcached; then HAS_MC=1; else
  HAS_MC=""
  MC_NOTE="kvserver has no --memcached flag yet: the textkv memcached-listener cells (-mc) are skipped."
  echo "note: $MC_NOTE" >&2
fi

PORT_A=${PORT_A:-23411}
PORT_B=${PORT_B:-23412}
: >"$RESULTS_TSV"
printf 'server\tworkload\tsize\tconns\tpipeline\trepeat\tops_per_sec\tp50_us\tp99_us\n' >>"$RESULTS_TSV"

ratio_of() { case $1 in get) echo 1 ;; set) echo 0 ;; mix) echo 0.5 ;; esac; }

# run_cells NAME PROTOCOL PORT: every cell against one listener.
run_cells() {
  local name=$1 proto=$2 port=$3 size workload cell conns pipe rep line threads
  for size in $SIZES; do
    # Prefill every key once and read them all back (a correctness check per server).
    line=$("$KVBENCH" --protocol "$proto" --addr "127.0.0.1:$port" -c 8 -t 2 -P 32 --keys "$KEYS" \
      --value-size "$size" --duration 0 --prefill --verify --seed 1) ||
      { echo "$name: prefill/verify failed: $line" >&2; return 1; }
    echo "$name $size B: prefilled $KEYS keys in $(field prefill_secs "$line") s, verified $(field verified "$line")" >&2
    for workload in $WORKLOADS; do
      for cell in $CELLS; do
        conns=${cell%:*} pipe=${cell#*:}
        threads=$(( conns < THREADS ? conns : THREADS ))
        for rep in $(seq "$REPEATS"); do
          if ! line=$("$KVBENCH" --protocol "$proto" --addr "127.0.0.1:$port" -c "$conns" -t "$threads" \
            -P "$pipe" --keys "$KEYS" --value-size "$size" --get-ratio "$(ratio_of "$workload")" \
            --duration "$CELL_SECS" --seed "$((rep + 1))"); then
            echo "$name $workload $size B c=$conns P=$pipe: kvbench failed: $line" >&2
            continue
          fi
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$workload" "$size" "$conns" "$pipe" "$rep" \
            "$(field ops_per_sec "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" >>"$RESULTS_TSV"
          echo "$name $workload ${size}B c=$conns P=$pipe #$rep: $(field ops_per_sec "$line") ops/s p50 $(field p50_us "$line") us" >&2
        done
      done
    done
  done
}

for server in $SERVERS; do
  dir="$BENCH_TMP/$server"
  case $server in
    memcached) start_memcached "$PORT_A"; run_cells memcached memcached "$PORT_A" ;;
    redis) start_redis "$PORT_A" "$dir" none; run_cells redis resp "$PORT_A" ;;
    redis-es) start_redis "$PORT_A" "$dir" everysec; run_cells redis-es resp "$PORT_A" ;;
    redis-al) start_redis "$PORT_A" "$dir" always; run_cells redis-al resp "$PORT_A" ;;
    tk-never | tk-es | tk-al)
      case $server in tk-never) fsync=never ;; tk-es) fsync=everysec ;; tk-al) fsync=always ;; esac
      if [ -n "$HAS_MC" ]; then
        start_textkv "$PORT_A" "$dir" "$fsync" "$PORT_B"
      else
        start_textkv "$PORT_A" "$dir" "$fsync"
      fi
      run_cells "$server-line" line "$PORT_A"
      [ -z "$HAS_MC" ] || run_cells "$server-mc" memcached "$PORT_B"
      ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
  esac
  stop_server
  rm -rf "$dir"
done

# ---- the table: medians per (server, cell), then ratios ----
COLUMNS_SPEC="memcached redis redis-es redis-al tk-never-line tk-never-mc tk-es-line tk-es-mc tk-al-line tk-al-mc"
RATIOS_SPEC="tk-never-line/memcached tk-never-line/redis tk-never-mc/memcached tk-es-line/redis-es tk-al-line/redis-al tk-never-line/tk-never-mc"
echo
echo "## kvbench comparison, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${CELL_SECS}s x ${REPEATS} per cell, $KEYS keys"
if [ -n "$MC_NOTE" ]; then echo; echo "$MC_NOTE"; fi
echo
echo "Median ops/s per cell (workload, value bytes, connections, pipeline depth); ratios are textkv / peer."
echo
awk -F'\t' -v cols="$COLUMNS_SPEC" -v ratios="$RATIOS_SPEC" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    if (n == 0) return ""
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  NR == 1 { next }
  {
    cell = $2 " " $3 " " $4 " " $5
    if (!(cell in seen)) { seen[cell] = 1; order[++ncells] = cell }
    ops[$1, cell] = ops[$1, cell] " " $7
    p50[$1, cell] = p50[$1, cell] " " $8
    present[$1] = 1
  }
  END {
    nc = split(cols, c, " "); nr = split(ratios, r, " ")
    header = "| workload | bytes | conns | pipe |"; rule = "|---|---:|---:|---:|"
    for (i = 1; i <= nc; i++) if (c[i] in present) { header = header " " c[i] " |"; rule = rule "---:|" }
    for (i = 1; i <= nr; i++) { split(r[i], pr, "/"); if ((pr[1] in present) && (pr[2] in present)) { header = header " " r[i] " |"; rule = rule "---:|" } }
    print header; print rule
    for (k = 1; k <= ncells; k++) {
      cell = order[k]; split(cell, f, " ")
      line = "| " f[1] " | " f[2] " | " f[3] " | " f[4] " |"
      for (i = 1; i <= nc; i++) if (c[i] in present) {
        m = median(ops[c[i], cell]); med[c[i]] = m
        line = line " " (m == "" ? "-" : sprintf("%.0f", m)) " |"
      }
      for (i = 1; i <= nr; i++) {
        split(r[i], pr, "/")
        if (!((pr[1] in present) && (pr[2] in present))) continue
        a = med[pr[1]]; b = med[pr[2]]
        line = line " " ((a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b)) " |"
      }
      print line
    }
    # Latency at one connection without pipelining (target: textkv p50 <= memcached p50).
    first = 1
    for (k = 1; k <= ncells; k++) {
      cell = order[k]; split(cell, f, " ")
      if (f[3] != 1 || f[4] != 1) continue
      if (first) {
        print ""; print "Median p50 latency (us) at 1 connection, no pipeline:"; print ""
        h = "| workload | bytes |"; rl = "|---|---:|"
        for (i = 1; i <= nc; i++) if (c[i] in present) { h = h " " c[i] " |"; rl = rl "---:|" }
        print h; print rl; first = 0
      }
      line = "| " f[1] " | " f[2] " |"
      for (i = 1; i <= nc; i++) if (c[i] in present) { m = median(p50[c[i], cell]); line = line " " (m == "" ? "-" : m) " |" }
      print line
    }
  }' "$RESULTS_TSV"
echo
case $RESULTS_TSV in
  "$BENCH_TMP"/*) [ -n "${KEEP_TMP:-}" ] || echo "(raw results deleted on exit; set RESULTS_TSV=path to keep them)" ;;
  *) echo "Raw results: $RESULTS_TSV" ;;
esac
