#!/usr/bin/env bash
# LoRA extraction benchmark (docs/lora_extract.md, "Performance"): rank-64 extraction from a
# llama-shaped base/fine-tune pair of about 1.1B parameters (TinyLlama's shapes, BF16, generated
# by `smelt dev make-model`), exact vs randomized SVD: wall time, median and worst relative
# reconstruction error, and the read floors: both models read from the page cache (`cat` to
# /dev/null, after a first read) and from the disk (`dd iflag=direct`, bypassing the cache).
# Prints a markdown table.
#
#   bench/lora_bench.sh [--layers N] [--hidden H] [--intermediate I] [--vocab V] [--rank R] [-j J]
#                       [--modes randomized,exact]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
smelt=$root/build/smelt
layers=22 hidden=2048 inter=5632 vocab=32000 rank=64 jobs=0 modes="randomized exact"
while [ $# -gt 0 ]; do
  case $1 in
    --layers) layers=$2; shift ;;
    --hidden) hidden=$2; shift ;;
    --intermediate) inter=$2; shift ;;
    --vocab) vocab=$2; shift ;;
    --rank) rank=$2; shift ;;
    -j) jobs=$2; shift ;;
    --modes) modes=${2//,/ }; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seconds() {
  local s
  s=$(date +%s.%N)
  "$@" >"$work/last.txt" 2>&1
  awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
}
shape=(--hidden "$hidden" --intermediate "$inter" --layers "$layers" --heads 32 --kv-heads 4
  --vocab "$vocab" --dtype BF16)
"$smelt" dev make-model "$work/base" "${shape[@]}" --seed 1 >/dev/null
"$smelt" dev make-model "$work/ft" --base "$work/base" --seed 2 --delta-scale 0.002 >/dev/null
bytes=$(du -cb "$work"/base/*.safetensors "$work"/ft/*.safetensors | tail -1 | cut -f1)
files=("$work"/base/*.safetensors "$work"/ft/*.safetensors)
cold=$(seconds sh -c 'for f; do dd if="$f" of=/dev/null bs=4M iflag=direct status=none; done' _ "${files[@]}")
cat "${files[@]}" >/dev/null  # into the page cache
floor=$(seconds sh -c 'cat "$@" >/dev/null' _ "${files[@]}")
echo "models: $layers layers, hidden $hidden, MLP $inter, vocab $vocab, BF16; both $((bytes / 1000000)) MB"
echo
echo "| run | seconds | x read floor | median error | worst error |"
echo "|---|---|---|---|---|"
echo "| read both models from the page cache (cat) | $floor | 1 | | |"
echo "| read both models from the disk (dd iflag=direct) | $cold | $(awk -v a="$cold" -v b="$floor" 'BEGIN { printf "%.1f", a / b }') | | |"
errors() {
  sed -n 's/.*median \([0-9.e+-]*\), worst \([0-9.e+-]*\).*/\1 | \2/p' "$work/last.txt"
}
for mode in $modes; do
  flag=""
  [ "$mode" = randomized ] && flag=--randomized
  rm -rf "$work/lora"
  s=$(seconds "$smelt" lora extract --model "$work/ft" --base "$work/base" "$work/lora" \
    --max-rank "$rank" $flag -j "$jobs" -q)
  x=$(awk -v a="$s" -v b="$floor" 'BEGIN { printf "%.1f", a / b }')
  echo "| $mode SVD, rank $rank, -j $jobs | $s | $x | $(errors) |"
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
