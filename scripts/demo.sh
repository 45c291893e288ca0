#!/usr/bin/env bash
# The main job: generate a tiny base model and two fine-tunes, TIES-merge them with
# examples/demo-ties.yml, and inspect the result (assumes scripts/setup.sh ran).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
smelt="${SMELT_BUILD_DIR:-$here/build}/smelt"
cd "$here"
rm -rf demo && mkdir -p demo
"$smelt" dev make-model demo/base --hidden 64 --layers 4 --heads 4 --vocab 320 --seed 1
"$smelt" dev make-model demo/finetune-a --base demo/base --delta-scale 0.01 --sparsity 0.5 --seed 2
"$smelt" dev make-model demo/finetune-b --base demo/base --delta-scale 0.01 --sparsity 0.5 --seed 3
"$smelt" plan examples/demo-ties.yml --explain 'model.layers.3.mlp.up_proj.weight'
"$smelt" merge examples/demo-ties.yml demo/merged --random-seed 0
"$smelt" inspect demo/merged
