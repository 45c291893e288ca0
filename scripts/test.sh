#!/usr/bin/env bash
# Runs every test (assumes scripts/setup.sh has built the tree): the GoogleTest suite, a fuzz
# smoke of every file parser (SMELT_FUZZ_SECONDS each, default 15) and the suite again under
# ASan+UBSan (docs/reliability.md). Any failure, crash or sanitizer report fails the script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SMELT_BUILD_DIR:-$here/build}"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
"$here/scripts/fuzz.sh" all "${SMELT_FUZZ_SECONDS:-15}"
"$here/scripts/sanitize.sh"
