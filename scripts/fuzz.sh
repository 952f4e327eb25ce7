#!/usr/bin/env bash
# Fuzz every target for a number of executions, then merge what it found into the small
# committed corpus (fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh [RUNS] [TARGET...]       RUNS defaults to 10000000 per target
#   JOBS=2 scripts/fuzz.sh ...                RUNS split over 2 workers, one per CPU
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz use the unstable flags it needs. The crate has no `unsafe`, so by default the
# targets are built without a sanitizer (SANITIZER=address to use ASan: slower).
# Crash inputs land in fuzz/artifacts/<target>/; add each to tests/fuzz_corpus.rs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=${1:-10000000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(line_parse record_parse recovery_load memcache_parse)
sanitizer=${SANITIZER:-none}
jobs=${JOBS:-1}
export RUSTC_BOOTSTRAP=1
# recovery_load writes every input to a file, memcache_parse keeps its stores in one:
# keep them in memory when possible, in a directory removed at the end (the targets put
# their scratch files in TMPDIR).
[ -d /dev/shm ] && export TMPDIR=/dev/shm
work=$(mktemp -d)
export TMPDIR="$work"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  # memcache_parse speaks memcached: it has its own dictionary.
  dict=textkv.dict
  [ "$target" = memcache_parse ] && dict=memcache.dict
  echo "== $target: $runs runs in $jobs worker(s)"
  cargo fuzz build -s "$sanitizer" -O "$target"
  binary=$(ls -d target/*/release/"$target" | head -n 1)
  # Each worker is pinned to one CPU: the targets that run a Store hand every write to its
  # writer thread, and on one CPU that hand-off is a plain context switch instead of a
  # cross-CPU wake-up (2.5 times the executions per second on the 2-CPU machine here).
  # Workers share the output corpus, and libFuzzer reloads it to pick up each other's finds.
  mkdir -p "artifacts/$target"
  pids=()
  for ((i = 0; i < jobs; i++)); do
    taskset -c $((i % $(nproc))) "$binary" "$work/$target" "corpus/$target" \
      -dict="$dict" -max_len=4096 -runs=$((runs / jobs)) -print_final_stats=1 \
      -artifact_prefix="artifacts/$target/" >"$work/$target.$i.log" 2>&1 &
    pids+=($!)
  done
  failed=0
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      failed=1
      tail -n 40 "$work/$target.$i.log"
    fi
    echo "-- worker $i"
    grep -E "^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added))|panicked|ERROR|SUMMARY|Test unit written" \
      "$work/$target.$i.log" || true
  done
  [ "$failed" = 0 ] || { echo "$target: a worker failed (crash inputs in fuzz/artifacts/$target/)"; exit 1; }
  # Keep the committed corpus small: only inputs that reach new edges (hit counts ignored).
  cargo fuzz run -s "$sanitizer" -O "$target" "corpus/$target" "$work/$target" -- \
    -merge=1 -use_counters=0 -max_len=4096 >/dev/null 2>&1
  echo "   corpus/$target: $(ls "corpus/$target" | wc -l) files"
done
