#!/usr/bin/env bash
# The project's test command: sets up (Debian packages, build), runs the test suite, runs it
# again under AddressSanitizer + UndefinedBehaviorSanitizer, and gives each fuzz target a short run.
# OUTRO_SKIP_SANITIZE=1 / OUTRO_SKIP_FUZZ=1 skip those stages (local iteration only; CI runs all).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
scripts/setup.sh
cmake --build build -j"$jobs"
echo "== tests (release build)"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900

if [ "${OUTRO_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== tests under ASan+UBSan"
  cmake -S . -B build-asan -DOUTRO_SANITIZE=ON -DOUTRO_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-asan -j"$jobs" --target outro outro_tests outro_amx_emulation_tests
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1800
fi

if [ "${OUTRO_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz targets (libFuzzer, short runs)"
  cmake -S . -B build-fuzz -DOUTRO_FUZZ=ON -DOUTRO_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
  cmake --build build-fuzz -j"$jobs"
  for t in build-fuzz/fuzz_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    corpus="fuzz/corpus/${name#fuzz_}"
    work=$(mktemp -d)
    [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
    echo "-- $name"
    "$t" "$work" -max_total_time="${OUTRO_FUZZ_SECONDS:-20}" -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 3
    rm -rf "$work"
  done
fi
echo "== all test stages passed"
