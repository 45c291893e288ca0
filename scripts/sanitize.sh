#!/usr/bin/env bash
# Builds the whole tree with AddressSanitizer + UndefinedBehaviorSanitizer (gcc, -O1 -g, asserts
# on, UB fatal) in build-asan (SMELT_ASAN_BUILD_DIR) and runs the whole GoogleTest suite under it;
# any sanitizer report (also from a `smelt` run a test expects to fail) fails the script
# (docs/reliability.md, "Sanitizers").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SMELT_ASAN_BUILD_DIR:-$here/build-asan}"
jobs="${SMELT_JOBS:-$(nproc)}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DSMELT_SANITIZE=ON -DSMELT_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$jobs"
# Reports go to files, so that one in a `smelt` run which a test expects to fail is not lost.
reports="$build/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1:log_path=$reports/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan:${UBSAN_OPTIONS:-}"
set +e
ctest --test-dir "$build" --output-on-failure -j"$jobs"
rc=$?
set -e
if [ -n "$(ls -A "$reports")" ]; then
  echo "sanitize.sh: sanitizer reports in $reports:" >&2
  head -n 40 "$reports"/* >&2
  exit 1
fi
exit $rc
