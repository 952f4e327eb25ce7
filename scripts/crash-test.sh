#!/usr/bin/env bash
# The long crash-consistency run: many SIGKILL/restart cycles against the real kvserver.
#
#   scripts/crash-test.sh [CYCLES] [EVERYSEC_CYCLES] [NEVER_CYCLES]   defaults: 500, 100, 100
#
# Other knobs: TEXTKV_CRASH_THREADS, TEXTKV_CRASH_KEYS, TEXTKV_CRASH_MAX_MS,
# TEXTKV_CRASH_SEED (replay a failing run; the seed is printed). Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
export TEXTKV_CRASH_CYCLES=${1:-500}
export TEXTKV_CRASH_CYCLES_EVERYSEC=${2:-100}
export TEXTKV_CRASH_CYCLES_NEVER=${3:-100}
cargo test --release --test crash -- --nocapture --test-threads=1 2>&1 |
  grep -E "TEXTKV_CRASH_SEED|crash test|panicked|test result|FAILED|lost|differs"
