#!/usr/bin/env bash
# Fuzzes smelt's parsers with libFuzzer under ASan+UBSan (docs/reliability.md, "Fuzzing"):
#   scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]
# Configures and builds build-fuzz (SMELT_FUZZ_BUILD_DIR) with clang when needed, then runs each
# target for SECONDS over a copy of its seed corpus fuzz/corpus/TARGET (the committed corpus is
# never changed). A crash, leak, UB report, timeout or out-of-memory fails the script; the input
# is kept in build-fuzz/artifacts/TARGET/ for a regression test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SMELT_FUZZ_BUILD_DIR:-$here/build-fuzz}"
all=(safetensors_header safetensors_index gguf_reader config_yaml tokenizer_json sentencepiece tokenizer_engine gguf_model torch_pickle lora_config)

if [ $# -lt 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]; targets: ${all[*]}" >&2
  exit 2
fi
what="$1" seconds="$2"
shift 2
if [ "$what" = all ]; then
  targets=("${all[@]}")
elif [[ " ${all[*]} " == *" $what "* ]]; then
  targets=("$what")
else
  echo "fuzz.sh: unknown target '$what'; targets: ${all[*]}" >&2
  exit 2
fi

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DSMELT_FUZZ=ON -DSMELT_BUILD_TESTS=OFF \
    -DSMELT_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$build" -j"${SMELT_JOBS:-$(nproc)}" --target "${targets[@]/#/fuzz_}"

failed=()
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp -r "$here/fuzz/corpus/$t/." "$work/"
  artifacts="$build/artifacts/$t"
  mkdir -p "$artifacts"
  log="$build/fuzz-$t.log"
  start=$SECONDS
  set +e
  "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=25 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$@" "$work" >"$log" 2>&1
  rc=$?
  set -e
  rm -rf "$work"
  stat() { sed -n "s/^stat::$1: *//p" "$log"; }
  # Coverage of the last status line ("#N DONE cov: C ft: F corp: ...").
  cov="$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)"
  if [ $rc -eq 0 ]; then
    echo "fuzz: $t: ok, $(stat number_of_executed_units) runs in $((SECONDS - start)) s" \
      "($(stat average_exec_per_sec)/s), ${cov:-cov: ?}, peak rss $(stat peak_rss_mb) MB"
  else
    echo "fuzz: $t: FAILED (exit $rc); log $log, input in $artifacts/" >&2
    grep -E 'ERROR|SUMMARY|runtime error|terminate called|what\(\)' "$log" | head -n 20 >&2 || true
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
