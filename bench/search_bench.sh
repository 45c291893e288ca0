#!/usr/bin/env bash
# Search benchmark on the repository's zoo (examples/zoo): evaluations per minute of the search
# verbs, each candidate merged into memory and scored on the four validation task files
# (docs/performance.md, "Search: evaluations per minute"). Prints a markdown table.
#
#   bench/search_bench.sh [--limit N] [--fevals N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
smelt=$root/build/smelt
limit=25 fevals=40
while [ $# -gt 0 ]; do
  case $1 in
    --limit) limit=$2; shift ;;
    --fevals) fevals=$2; shift ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$root"
tasks=""
for t in add rev up next; do tasks="$tasks --tasks examples/zoo/tasks/$t.val.jsonl"; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seconds() {
  local s
  s=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n * 60 / s }'; }
echo "| run | evaluations | seconds | evaluations/min |"
echo "|---|---|---|---|"
for j in 1 2; do
  s=$(seconds "$smelt" sweep -q examples/zoo/merge.yml --vary 'models[0].parameters.weight=0:1:11' \
    $tasks --limit "$limit" -j "$j")
  echo "| sweep, 11 points, --limit $limit, -j $j | 11 | $s | $(rate 11 "$s") |"
done
s=$(seconds "$smelt" sweep -q examples/zoo/merge.yml --vary 'models[0].parameters.weight=0:1:11' \
  $tasks -j 1)
echo "| sweep, 11 points, all lines, -j 1 | 11 | $s | $(rate 11 "$s") |"
for w in 1 2; do
  rm -rf "$work/ev"
  # The limit is the genome's (examples/zoo/evolve.yml); the final scoring of the best config on
  # every line of the validation and test files is included in the time.
  s=$(seconds "$smelt" evolve examples/zoo/evolve.yml --storage-path "$work/ev" \
    --max-fevals "$fevals" --workers "$w" -j 1 -q)
  echo "| evolve, --workers $w -j 1 (+ final scoring) | $fevals | $s | $(rate "$fevals" "$s") |"
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
