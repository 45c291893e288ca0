#!/usr/bin/env bash
# Encode throughput (MB/s, one thread) of smelt's tokenizers against the reference libraries on
# generated mixed-script text: Hugging Face tokenizers (Node binding, tests/node) for the
# tokenizer.json styles of tests/node/make_tokenizers.mjs, libsentencepiece (Python binding) for
# the SentencePiece models of tests/reference/sentencepiece_ref.py. Every line is encoded on its
# own, without special tokens: smelt with one encode() call per line (bench/tokenize_bench.cpp),
# the Node binding with encodeBatch over 1000 lines at a time (RAYON_NUM_THREADS=1,
# TOKENIZERS_PARALLELISM=false), sentencepiece with encode(list of lines, num_threads=1).
# MB/s is bytes over CPU seconds of the encoding loop (Google Benchmark's CPU time for smelt, the
# process's CPU time for the references), so that other work on a shared machine does not move
# the figures.
#
# usage: bench/tokenize_bench.sh [--bench build/smelt_bench] [--mb 10] [--work DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$here/build/smelt_bench"
mb=10
work="${TMPDIR:-/tmp}/smelt-tokenize-bench"
while (($#)); do
  case "$1" in
    --bench) bench="$2"; shift 2 ;;
    --mb) mb="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "usage: $0 [--bench build/smelt_bench] [--mb 10] [--work DIR]" >&2; exit 2 ;;
  esac
done
[ -x "$bench" ] || { echo "tokenize_bench: $bench not found (build smelt_bench first)" >&2; exit 1; }
corpus="$here/tests/data/tokenizer_corpus.txt"
mkdir -p "$work"
text="$work/text-${mb}mb.txt"

# The text: seeded lines of corpus words, with ~1 word in 4 mutated (so most words are not in
# any cache), numbers and whole corpus lines, up to the requested size.
/usr/bin/python3 - "$corpus" "$text" "$mb" <<'PY'
import random, sys
corpus, out, mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
lines = [l for l in open(corpus, encoding="utf-8").read().split("\n") if l.strip()]
words = " ".join(lines).split()
rng = random.Random(3)
def mutate(w):
    c = list(w)
    i = rng.randrange(len(c))
    c[i] = rng.choice(words)[0]
    return "".join(c)
target, size, parts = int(mb * 1e6), 0, []
while size < target:
    r = rng.random()
    if r < 0.3:
        l = rng.choice(lines)
    elif r < 0.4:
        l = " ".join(str(rng.randrange(10 ** rng.randint(1, 12))) for _ in range(rng.randint(2, 8)))
    else:
        ws = [rng.choice(words) for _ in range(rng.randint(4, 20))]
        l = " ".join(mutate(w) if rng.random() < 0.25 else w for w in ws)
    parts.append(l)
    size += len(l.encode()) + 1
open(out, "w", encoding="utf-8").write("\n".join(parts) + "\n")
PY

node "$here/tests/node/make_tokenizers.mjs" "$work/tok" "$corpus" >/dev/null
/usr/bin/python3 "$here/tests/reference/sentencepiece_ref.py" "$work/sp" "$corpus" >/dev/null

# smelt's MB/s for one tokenizer (or the reason it could not run).
smelt_mbps() {
  local out
  if ! out=$(SMELT_BENCH_TOKENIZER="$1" SMELT_BENCH_TEXT="$text" "$bench" \
      --benchmark_filter=BM_TokenizeLines --benchmark_format=json 2>/dev/null); then
    echo "failed"; return
  fi
  printf '%s' "$out" | /usr/bin/python3 -c '
import json, sys
b = json.load(sys.stdin)["benchmarks"][0]
print("error" if b.get("error_occurred") else "%.2f" % (b["bytes_per_second"] / 1e6))'
}

bytes=$(stat -c %s "$text")
echo "text: $text ($bytes bytes, $(wc -l <"$text") lines); one thread, each line encoded on its own"
printf '%-28s %12s %12s\n' "tokenizer" "smelt MB/s" "ref MB/s"
for style in gpt2 llama3 llama2 mistral unigram wordpiece; do
  ref=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false node "$here/tests/node/tokenize.mjs" bench \
    "$work/tok/$style/tokenizer.json" "$text" | awk '{printf "%.2f", $1 / $3 / 1e6}')
  printf '%-28s %12s %12s\n' "$style (tokenizer.json)" "$(smelt_mbps "$work/tok/$style")" "$ref"
done
for model in bpe unigram; do
  ref=$(/usr/bin/python3 - "$work/sp/$model/tokenizer.model" "$text" <<'PY'
import sys, time
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
data = open(sys.argv[2], encoding="utf-8").read()
lines = data.split("\n")
start = time.process_time()
sp.encode(lines, num_threads=1)
print("%.2f" % (len(data.encode()) / (time.process_time() - start) / 1e6))
PY
)
  printf '%-28s %12s %12s\n' "$model (sentencepiece)" "$(smelt_mbps "$work/sp/$model/tokenizer.model")" "$ref"
done
