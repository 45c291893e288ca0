#!/usr/bin/env bash
# Runs every test (assumes scripts/setup.sh has built the tree).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SMELT_BUILD_DIR:-$here/build}"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
