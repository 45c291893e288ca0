#!/usr/bin/env bash
# The main job (assumes scripts/setup.sh ran): merge the trained fine-tunes of the repository's
# model zoo (examples/zoo: a tiny byte-level llama base and fine-tunes, each trained on one
# synthetic task) with examples/zoo/merge.yml, then evaluate the base, every fine-tune and the
# merge on every task's held-out test file with `smelt eval`, and check that the merge beats every
# single model on the mean score. Also evaluates the merge config in memory (no file written),
# shows a generation and sweeps one merge weight (a table and an SVG plot).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
smelt="${SMELT_BUILD_DIR:-$here/build}/smelt"
cd "$here"
rm -rf demo && mkdir -p demo
zoo=examples/zoo
tasks=()
for t in "$zoo"/tasks/*.jsonl; do
  case $t in *.val.jsonl) ;; *) tasks+=(--tasks "$t") ;; esac
done
models=("$zoo/base")
for ft in "$zoo"/ft-*; do models+=("$ft"); done

"$smelt" plan "$zoo/merge.yml"
"$smelt" merge "$zoo/merge.yml" demo/merged
echo
echo "== smelt eval: base, each fine-tune and the merge on every task (held-out test lines)"
"$smelt" eval -q "${models[@]}" demo/merged "${tasks[@]}" --text "$zoo/text.txt"
"$smelt" eval -q --json "${models[@]}" demo/merged "${tasks[@]}" > demo/scores.json
echo
echo "== the same merge evaluated in memory, without writing it"
"$smelt" eval -q "$zoo/merge.yml" "${tasks[@]}"
echo
echo "== smelt generate with the merge"
for p in "38+21=" "rev fcm=" "up hello=" "next mbxql="; do
  printf '%s' "$p"
  "$smelt" generate -q demo/merged --prompt "$p" --max-tokens 12 --stop $'\n'
done
echo
echo "== smelt sweep: ft-add's weight in the merge, each point merged into memory and scored on"
echo "   the validation lines (table below, plot in demo/sweep.svg; docs/search.md)"
val=()
for t in add rev up next; do val+=(--tasks "$zoo/tasks/$t.val.jsonl"); done
"$smelt" sweep -q "$zoo/merge.yml" --vary 'models[0].parameters.weight=0:1.2:7' "${val[@]}" \
  --limit 25 --csv demo/sweep.csv --plot demo/sweep.svg
echo
python3 - demo/scores.json <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["models"]
merged = next(m for m in models if m["model"] == "demo/merged")
others = [m for m in models if m is not merged]
best = max(others, key=lambda m: m["mean"])
print(f"merge mean {merged['mean']:.4f}; best single model {best['model']} {best['mean']:.4f}")
if merged["mean"] <= best["mean"]:
    sys.exit("the merge does not beat every single model on the mean")
print("the merge beats the base and every fine-tune on the mean score")
PY
