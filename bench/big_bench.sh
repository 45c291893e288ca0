#!/usr/bin/env bash
# 70B-shaped sparse benchmark (issue 19): three llama-70B-shaped bf16 models (hidden 8192,
# intermediate 28672, 80 layers, 64 heads, 8 KV heads, vocab 128256; 141 GB each) made without
# using disk: a valid safetensors header followed by a hole (`truncate`), so the data reads as
# zeros. Times `smelt plan` of a ties merge of the three (all 80 layers), then a ties merge of
# layer 0 plus embeddings, final norm and head (`slices:` with layer_range [0, 1]; ~5.9 GB out)
# under /usr/bin/time: seconds, MB/s of output and peak RSS. The inputs' pages are read into the
# page cache first (holes read as zero pages), so the merge measures compute + write.
# See bench/README.md ("70B-shaped sparse case").
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: bench/big_bench.sh [options]

  --smelt PATH     smelt binary (default: build/smelt under the repository root)
  --work DIR       work dir for the sparse models, configs, logs and the output
                   (default /tmp/smelt-big70b; must support sparse files; everything but the
                   logs and the report is deleted at the end)
  -j, --threads N  merge threads (default 2)
  --plan-reps N    timed `smelt plan` runs (default 5; the first and the fastest are reported)
  --no-merge       only the plan timing (writes nothing big)
  -h, --help       this text
EOF
}

die() { echo "big_bench.sh: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMELT=$REPO/build/smelt
WORK=/tmp/smelt-big70b
JOBS=2
PLAN_REPS=5
MERGE=1
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --smelt) need_arg "$@"; SMELT=$2; shift 2 ;;
    --work) need_arg "$@"; WORK=$2; shift 2 ;;
    -j|--threads) need_arg "$@"; JOBS=$2; shift 2 ;;
    --plan-reps) need_arg "$@"; PLAN_REPS=$2; shift 2 ;;
    --no-merge) MERGE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
for v in JOBS PLAN_REPS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || die "--${v,,} must be a positive integer, got '${!v}'"
done
[[ -x $SMELT ]] || die "no smelt binary at $SMELT (build it first)"
SMELT=$(cd "$(dirname "$SMELT")" && pwd)/$(basename "$SMELT")
PY=/usr/bin/python3
[[ -x $PY ]] || die "$PY not found (it writes the safetensors headers)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found: apt-get install time"

# 70B llama shape (Llama-2/3-70B)
H=8192 I=28672 L=80 NH=64 KV=8 V=128256
HEAD_DIM=$((H / NH))

mkdir -p "$WORK" || die "cannot create $WORK"
WORK=$(cd "$WORK" && pwd)
MODELS=$WORK/models LOGS=$WORK/logs OUT=$WORK/out
cleanup() { rm -rf "$MODELS" "$OUT" "$WORK"/*.yml 2>/dev/null; }
trap cleanup EXIT
trap 'echo "big_bench.sh: interrupted" >&2; exit 130' INT TERM
mkdir -p "$LOGS"
rm -f "$LOGS"/*
REPORT=$WORK/report-$(date +%Y%m%d-%H%M%S).md
: > "$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }
progress() { echo "[$(date +%H:%M:%S)] $*" >&2; }
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 1000 * (b - a) }'; }

# output of the slice merge: embed_tokens + lm_head + layer 0 + 3 norms, bf16
OUT_EST=$((2 * (2 * V * H + 2 * H * H + 2 * H * KV * HEAD_DIM + 3 * H * I + 3 * H)))
if [[ $MERGE -eq 1 ]]; then
  AVAIL=$(df -B1 --output=avail "$WORK" | tail -1 | tr -d ' ')
  (( AVAIL > OUT_EST + 1024 * 1024 * 1024 )) ||
    die "not enough free disk in $WORK for the ~$((OUT_EST / 1000000)) MB output plus 1 GB (free: $((AVAIL / 1000000)) MB); or use --no-merge"
  MEM_AVAIL=$(( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) * 1024 ))
  (( MEM_AVAIL > 3 * OUT_EST )) ||
    echo "big_bench.sh: warning: the page cache cannot hold the three inputs' merged parts ($((3 * OUT_EST / 1000000)) MB; available $((MEM_AVAIL / 1000000)) MB): part of each read will be a fresh zero page" >&2
fi

# ---------------------------------------------------------------------------------------------
# sparse models

progress "writing three sparse 70B-shaped models in $MODELS"
rm -rf "$MODELS" "$OUT"
mkdir -p "$MODELS"
"$SMELT" dev make-model "$MODELS/tiny" > "$LOGS/make-model.log" 2>&1 ||
  die "smelt dev make-model failed (log: $LOGS/make-model.log)"
# writes MODEL/model.safetensors (header + hole), MODEL/config.json (make-model's keys with the
# 70B shape) and prints, for the tensors of the slice merge, "OFFSET LENGTH" (file byte ranges)
# into MODEL/warm.ranges
gen_model() {
  "$PY" - "$1" "$MODELS/tiny/config.json" "$H" "$I" "$L" "$NH" "$KV" "$V" <<'PYEOF'
import json, os, struct, sys
out, tiny_cfg = sys.argv[1], sys.argv[2]
H, I, L, NH, KV, V = map(int, sys.argv[3:9])
hd = H // NH
shapes = [("model.embed_tokens.weight", [V, H])]
for n in range(L):
    p = f"model.layers.{n}."
    shapes += [
        (p + "input_layernorm.weight", [H]),
        (p + "post_attention_layernorm.weight", [H]),
        (p + "self_attn.q_proj.weight", [NH * hd, H]),
        (p + "self_attn.k_proj.weight", [KV * hd, H]),
        (p + "self_attn.v_proj.weight", [KV * hd, H]),
        (p + "self_attn.o_proj.weight", [H, NH * hd]),
        (p + "mlp.gate_proj.weight", [I, H]),
        (p + "mlp.up_proj.weight", [I, H]),
        (p + "mlp.down_proj.weight", [H, I]),
    ]
shapes += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
header, off, spans = {"__metadata__": {"format": "pt"}}, 0, {}
for name, shape in shapes:
    n = 2
    for d in shape:
        n *= d
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
    spans[name] = (off, n)
    off += n
hj = json.dumps(header, separators=(",", ":")).encode()
hj += b" " * (-(8 + len(hj)) % 8)  # data starts 8-byte aligned
os.makedirs(out, exist_ok=True)
path = os.path.join(out, "model.safetensors")
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(hj)))
    f.write(hj)
    f.truncate(8 + len(hj) + off)  # the data: a hole, reads as zeros
cfg = json.load(open(tiny_cfg))
cfg.update({"hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
            "num_attention_heads": NH, "num_key_value_heads": KV, "head_dim": hd,
            "vocab_size": V, "max_position_embeddings": 8192, "rope_theta": 500000.0,
            "torch_dtype": "bfloat16"})
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
base = 8 + len(hj)
with open(os.path.join(out, "warm.ranges"), "w") as f:
    for name, (o, n) in spans.items():
        if not name.startswith("model.layers.") or name.startswith("model.layers.0."):
            f.write(f"{base + o} {n}\n")
PYEOF
}
for m in base ft1 ft2; do
  gen_model "$MODELS/$m" || die "writing $MODELS/$m failed"
  for f in tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
    [[ -f $MODELS/tiny/$f ]] && cp "$MODELS/tiny/$f" "$MODELS/$m/"
  done
done
rm -rf "$MODELS/tiny"
FILE_BYTES=$(stat -c %s "$MODELS/base/model.safetensors")
DISK_KIB=$(du -sk "$MODELS" | cut -f1)
(( DISK_KIB < 1024 * 1024 )) || die "the file system of $WORK does not keep the models sparse ($DISK_KIB KiB used)"

cat > "$WORK/plan.yml" <<EOF
merge_method: ties
base_model: $MODELS/base
models:
  - model: $MODELS/ft1
    parameters: {weight: 0.5, density: 0.5}
  - model: $MODELS/ft2
    parameters: {weight: 0.5, density: 0.5}
dtype: bfloat16
EOF
cat > "$WORK/slice.yml" <<EOF
merge_method: ties
base_model: $MODELS/base
slices:
  - sources:
      - model: $MODELS/base
        layer_range: [0, 1]
      - model: $MODELS/ft1
        layer_range: [0, 1]
        parameters: {weight: 0.5, density: 0.5}
      - model: $MODELS/ft2
        layer_range: [0, 1]
        parameters: {weight: 0.5, density: 0.5}
dtype: bfloat16
EOF

# ---------------------------------------------------------------------------------------------
# plan of the whole 80-layer ties merge

progress "smelt plan of the 80-layer ties merge ($PLAN_REPS runs)"
plan_ms=()
for ((r = 1; r <= PLAN_REPS; r++)); do
  t0=$EPOCHREALTIME
  "$SMELT" plan "$WORK/plan.yml" > "$LOGS/plan-$r.log" 2>&1 || { tail -5 "$LOGS/plan-$r.log" >&2; die "smelt plan failed (log: $LOGS/plan-$r.log)"; }
  plan_ms+=("$(elapsed_ms "$t0" "$EPOCHREALTIME")")
done
PLAN_BEST=$(printf '%s\n' "${plan_ms[@]}" | sort -g | head -1)
PLAN_SUMMARY=$(grep -E '^(output|reads|estimated)' "$LOGS/plan-1.log" | sed 's/^/    /')

# ---------------------------------------------------------------------------------------------
# slice merge: layer 0 + embeddings + norm + head

if [[ $MERGE -eq 1 ]]; then
  "$SMELT" plan "$WORK/slice.yml" > "$LOGS/plan-slice.log" 2>&1 || { tail -5 "$LOGS/plan-slice.log" >&2; die "smelt plan of the slice merge failed (log: $LOGS/plan-slice.log)"; }
  progress "reading the merged tensors' byte ranges of the three inputs into the page cache"
  for m in base ft1 ft2; do
    while read -r off len; do
      dd if="$MODELS/$m/model.safetensors" of=/dev/null bs=16M skip="$off" count="$len" \
        iflag=skip_bytes,count_bytes status=none
    done < "$MODELS/$m/warm.ranges"
  done
  progress "smelt merge (ties, layer_range [0, 1], -j$JOBS)"
  t0=$EPOCHREALTIME
  if /usr/bin/time -o "$LOGS/merge.time" -f '%e %M %U %S' \
      "$SMELT" merge "$WORK/slice.yml" "$OUT" -j "$JOBS" -q > "$LOGS/merge.log" 2>&1; then
    WALL=$(elapsed_ms "$t0" "$EPOCHREALTIME")
    read -r M_S M_KIB M_U M_SYS < <(tail -1 "$LOGS/merge.time")
    OUT_BYTES=0 OUT_FILES=0
    for f in "$OUT"/*.safetensors; do OUT_BYTES=$((OUT_BYTES + $(stat -c %s "$f"))) OUT_FILES=$((OUT_FILES + 1)); done
    MERGE_LINE="$M_S s (wall $(awk -v w="$WALL" 'BEGIN { printf "%.2f", w / 1000 }') s; user $M_U s, sys $M_SYS s), output $OUT_BYTES bytes in $OUT_FILES file(s), $(awk -v b="$OUT_BYTES" -v s="$M_S" 'BEGIN { if (s > 0) printf "%.0f", b / s / 1e6; else print "n/a" }') MB/s, peak RSS $(awk -v k="$M_KIB" 'BEGIN { printf "%.0f", k / 1024 }') MiB"
  else
    tail -5 "$LOGS/merge.log" >&2
    MERGE_LINE="FAILED (log: $LOGS/merge.log)"
  fi
  rm -rf "$OUT"
fi

# ---------------------------------------------------------------------------------------------
# report

say "# smelt 70B-shaped sparse benchmark"
say ""
say "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) CPUs, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; work dir $WORK ($(df --output=source "$WORK" | tail -1))"
say "- smelt: $SMELT ($("$SMELT" --version 2>/dev/null | head -1); binary mtime $(date -u -r "$SMELT" '+%Y-%m-%d %H:%M:%S UTC'))"
say "- models: 3 x llama hidden $H, intermediate $I, $L layers, $NH heads, $KV KV heads, vocab $V, bf16: $FILE_BYTES bytes each (sparse: data is a hole, $DISK_KIB KiB on disk for all three)"
say "- smelt plan, ties of base + 2 (all $L layers): first ${plan_ms[0]} ms, fastest $PLAN_BEST ms (runs: ${plan_ms[*]} ms)"
say "$PLAN_SUMMARY"
if [[ $MERGE -eq 1 ]]; then
  say "- smelt merge, ties, slices layer_range [0, 1] (layer 0 + embed_tokens + norm + lm_head), -j$JOBS, inputs zeros from the page cache: $MERGE_LINE"
fi
say ""
say "Report: $REPORT; logs: $LOGS"
