#!/usr/bin/env bash
# Fuzz every target for a number of executions, then merge what it found into the small
# committed corpus (fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh [RUNS] [TARGET...]       RUNS defaults to 10000000 per target
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
export RUSTC_BOOTSTRAP=1
# recovery_load writes every input to a file, memcache_parse keeps its stores in one:
# keep them in memory when possible.
[ -d /dev/shm ] && export TMPDIR=/dev/shm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  # memcache_parse speaks memcached: it has its own dictionary.
  dict=textkv.dict
  [ "$target" = memcache_parse ] && dict=memcache.dict
  echo "== $target: $runs runs"
  cargo fuzz run -s "$sanitizer" -O "$target" "$work/$target" "corpus/$target" -- \
    -dict="$dict" -max_len=4096 -runs="$runs" -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::|INFO: Seed)|panicked|ERROR|SUMMARY" || true
  # Keep the committed corpus small: only inputs that add coverage.
  cargo fuzz run -s "$sanitizer" -O "$target" "corpus/$target" "$work/$target" -- \
    -merge=1 -max_len=4096 >/dev/null 2>&1
  echo "   corpus/$target: $(ls "corpus/$target" | wc -l) files"
done
