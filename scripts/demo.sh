#!/usr/bin/env bash
# The main job: generate two tiny example models and inspect them (assumes scripts/setup.sh ran).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
smelt="${SMELT_BUILD_DIR:-$here/build}/smelt"
demo="${SMELT_DEMO_DIR:-$here/demo}"
rm -rf "$demo" && mkdir -p "$demo"
"$smelt" dev make-model "$demo/base" --hidden 64 --layers 2 --heads 4 --vocab 320 --seed 1
"$smelt" dev make-model "$demo/finetune" --base "$demo/base" --delta-scale 0.01 --seed 2
"$smelt" inspect "$demo/base"
"$smelt" inspect "$demo/finetune"
