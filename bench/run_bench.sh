#!/usr/bin/env bash
# smelt end-to-end performance benchmark: time and peak RSS of `smelt merge` for fifteen merge
# methods on a generated bf16 llama-shaped model (~1B parameters by default), against the I/O floor
# of the same machine (max of the warm input read and an fio direct-I/O write of the output) and
# against a per-tensor numpy baseline (bench/numpy_baseline.py), plus a 1-vs-2-thread scaling check
# and a determinism check (cmp of -j1 and -j2 outputs). Needs fio (apt-get install fio).
# See bench/README.md for what every column means.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: bench/run_bench.sh [options]

  --smelt PATH          smelt binary (default: build/smelt under the repository root)
  --work DIR            work dir: models, configs, logs, reports (default /tmp/smelt-bench);
                        generated models are reused when they exist with the same shape
  --scale N             multiply layers and vocabulary by N (doubles the model and its largest
                        tensor, embed_tokens, for N=2); default 1
  --quick               tiny model (hidden 256, 2 layers, vocab 8192): a smoke run of seconds
  --hidden H --intermediate I --layers L --heads NH --kv-heads KV --vocab V
                        model shape before --scale (default 2048 5632 16 16 8 65536: 1.02B
                        parameters, 2.05 GB bf16, embed_tokens 268 MB)
  --methods LIST        comma-separated methods to time (default: all fifteen: linear,
                        task_arithmetic, ties, dare_ties, dare_linear, slerp, nuslerp,
                        multislerp, karcher, model_stock, della, della_linear, breadcrumbs,
                        breadcrumbs_ties, sce)
  --baseline LIST       methods for the numpy baseline: a list, "all" or "none"
                        (default: all at --scale 1, none at larger scales: it needs ~6x the
                        largest tensor plus the whole output in RAM); the baseline has no
                        nuslerp, multislerp, karcher or sce: "all" leaves them out
  --select partition|sort
                        baseline top-k: np.argpartition (default, generous to the baseline) or a
                        full argsort like mergekit's torch.argsort (much slower)
  --read mmap|pread     baseline input reads (default mmap + copy, like safetensors' safe_open)
  --thread-methods LIST methods for the -j1 vs -j2 runs on /dev/shm (default ties,dare_ties,slerp;
                        "none" skips them)
  -j, --threads N       threads for the main table (default 2)
  --reps N              timed smelt runs per row (default 1; the table shows the fastest, the
                        details list all)
  --seed N              --random-seed for smelt and the baseline (default 42)
  --wait-idle S         before each timed step, wait up to S seconds for the other processes'
                        CPU use to fall below 15% of one CPU (default 60; 0 with --quick); the
                        busy share seen before each run is listed in the details
  --no-warmup           skip the untimed warm-up merge before the floors and the table
  --clean               delete the generated models at the end (outputs are always deleted)
  -h, --help            this text
EOF
}

die() { echo "run_bench.sh: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMELT=$REPO/build/smelt
WORK=/tmp/smelt-bench
SCALE=1
QUICK=0
H=2048 I=5632 L=16 NH=16 KV=8 V=65536
SHAPE_SET=0
ALL_METHODS="linear task_arithmetic ties dare_ties dare_linear slerp nuslerp multislerp karcher model_stock della della_linear breadcrumbs breadcrumbs_ties sce"
# methods bench/numpy_baseline.py implements
BASELINE_METHODS="linear task_arithmetic ties dare_ties dare_linear slerp model_stock della della_linear breadcrumbs breadcrumbs_ties"
METHODS=$ALL_METHODS
BASELINE=auto
SELECT=partition
READ=mmap
THREAD_METHODS="ties dare_ties slerp"
JOBS=2
REPS=1
SEED=42
WARMUP=1
CLEAN=0
WAIT_IDLE=""

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --smelt) need_arg "$@"; SMELT=$2; shift 2 ;;
    --work) need_arg "$@"; WORK=$2; shift 2 ;;
    --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --hidden) need_arg "$@"; H=$2; SHAPE_SET=1; shift 2 ;;
    --intermediate) need_arg "$@"; I=$2; SHAPE_SET=1; shift 2 ;;
    --layers) need_arg "$@"; L=$2; SHAPE_SET=1; shift 2 ;;
    --heads) need_arg "$@"; NH=$2; SHAPE_SET=1; shift 2 ;;
    --kv-heads) need_arg "$@"; KV=$2; SHAPE_SET=1; shift 2 ;;
    --vocab) need_arg "$@"; V=$2; SHAPE_SET=1; shift 2 ;;
    --methods) need_arg "$@"; METHODS=${2//,/ }; shift 2 ;;
    --baseline) need_arg "$@"; BASELINE=${2//,/ }; shift 2 ;;
    --select) need_arg "$@"; SELECT=$2; shift 2 ;;
    --read) need_arg "$@"; READ=$2; shift 2 ;;
    --thread-methods) need_arg "$@"; THREAD_METHODS=${2//,/ }; shift 2 ;;
    -j|--threads) need_arg "$@"; JOBS=$2; shift 2 ;;
    --reps) need_arg "$@"; REPS=$2; shift 2 ;;
    --seed) need_arg "$@"; SEED=$2; shift 2 ;;
    --wait-idle) need_arg "$@"; WAIT_IDLE=$2; shift 2 ;;
    --no-warmup) WARMUP=0; shift ;;
    --clean) CLEAN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

[[ -z $WAIT_IDLE ]] && WAIT_IDLE=$(( QUICK == 1 ? 0 : 60 ))
for v in WAIT_IDLE SCALE JOBS REPS SEED H I L NH KV V; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 0 ]] || die "--${v,,} must be a non-negative integer, got '${!v}'"
done
[[ $SCALE -ge 1 && $REPS -ge 1 && $JOBS -ge 1 ]] || die "--scale, --reps and -j must be >= 1"
[[ $SELECT == partition || $SELECT == sort ]] || die "--select must be partition or sort"
[[ $READ == mmap || $READ == pread ]] || die "--read must be mmap or pread"
for m in $METHODS; do [[ " $ALL_METHODS " == *" $m "* ]] || die "unknown method '$m' (known: $ALL_METHODS)"; done
[[ $THREAD_METHODS == none ]] && THREAD_METHODS=""
for m in $THREAD_METHODS; do [[ " $ALL_METHODS " == *" $m "* ]] || die "unknown method '$m' in --thread-methods"; done
baseline_of() { local m out=""; for m in "$@"; do [[ " $BASELINE_METHODS " == *" $m "* ]] && out+="$m "; done; echo "${out% }"; }
if [[ $BASELINE == auto ]]; then
  # shellcheck disable=SC2086
  if [[ $SCALE -eq 1 ]]; then BASELINE=$(baseline_of $METHODS); else BASELINE=""; fi
elif [[ $BASELINE == all ]]; then
  # shellcheck disable=SC2086
  BASELINE=$(baseline_of $METHODS)
elif [[ $BASELINE == none ]]; then BASELINE=""
fi
for m in $BASELINE; do
  [[ " $ALL_METHODS " == *" $m "* ]] || die "unknown method '$m' in --baseline"
  [[ " $BASELINE_METHODS " == *" $m "* ]] || die "the numpy baseline does not implement '$m' (it has: $BASELINE_METHODS)"
done

if [[ $QUICK -eq 1 && $SHAPE_SET -eq 0 ]]; then H=256 I=704 L=2 NH=4 KV=4 V=8192; fi
BASE_TAG="h$H-i$I-l$L-nh$NH-kv$KV-v$V"
L=$((L * SCALE))
V=$((V * SCALE))
TAG="h$H-i$I-l$L-nh$NH-kv$KV-v$V"
(( NH > 0 && H % NH == 0 && KV > 0 && NH % KV == 0 )) || die "heads must divide hidden and kv-heads must divide heads"

[[ -x $SMELT ]] || die "no smelt binary at $SMELT (build it first, e.g. cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build-bench smelt, then pass --smelt build-bench/smelt)"
SMELT=$(cd "$(dirname "$SMELT")" && pwd)/$(basename "$SMELT")
PY=/usr/bin/python3
BASELINE_PY=$REPO/bench/numpy_baseline.py
if [[ -n $BASELINE ]]; then
  [[ -x $PY ]] || die "$PY not found (the baseline needs Debian's python3 with python3-numpy and python3-yaml)"
  $PY -c 'import numpy, yaml' 2>/dev/null || die "$PY cannot import numpy and yaml: apt-get install python3-numpy python3-yaml (or run with --baseline none)"
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found: apt-get install time"
command -v fio > /dev/null || die "bench needs fio (the write floor): apt-get install fio"
# fio's asynchronous engine: libaio, else io_uring
FIO_ENGINES=$(fio --enghelp 2>&1)
if grep -qw libaio <<< "$FIO_ENGINES"; then FIO_ENGINE=libaio
elif grep -qw io_uring <<< "$FIO_ENGINES"; then FIO_ENGINE=io_uring
else die "this fio has neither the libaio nor the io_uring engine (fio --enghelp)"; fi

# ---------------------------------------------------------------------------------------------
# sizes and space checks

HEAD_DIM=$((H / NH))
PER_LAYER=$((2 * H * H + 2 * H * KV * HEAD_DIM + 3 * H * I + 2 * H))
PARAMS=$((L * PER_LAYER + 2 * V * H + H))
EST_BYTES=$((2 * PARAMS))
EMBED_BYTES=$((2 * V * H))
MODELS=$WORK/models-$TAG
CONFIGS=$WORK/configs-$TAG
LOGS=$WORK/logs-$TAG
SHM=/dev/shm/smelt-bench-$$
GEN_ARGS="--hidden $H --intermediate $I --layers $L --heads $NH --kv-heads $KV --vocab $V --dtype BF16"

mkdir -p "$WORK" || die "cannot create $WORK"
WORK=$(cd "$WORK" && pwd)
MODELS=$WORK/models-$TAG CONFIGS=$WORK/configs-$TAG LOGS=$WORK/logs-$TAG

gb() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }
models_ready() { [[ -f $MODELS/.complete && $(cat "$MODELS/.complete") == "$GEN_ARGS" ]]; }

NEED_DISK=$((2 * EST_BYTES + 512 * 1024 * 1024))   # one output + the write-floor file + slack
models_ready || NEED_DISK=$((NEED_DISK + 3 * EST_BYTES))
AVAIL_DISK=$(df -B1 --output=avail "$WORK" | tail -1 | tr -d ' ')
if (( AVAIL_DISK < NEED_DISK )); then
  echo "run_bench.sh: not enough free disk space in $WORK: this run needs about $(gb $NEED_DISK)" >&2
  echo "  (3 input models of $(gb $EST_BYTES) unless already generated, one output and the write-floor file)," >&2
  echo "  and only $(gb "$AVAIL_DISK") is free. Free some space, pick another --work, or use --quick." >&2
  exit 1
fi
MEM_AVAIL=$(( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) * 1024 ))
if (( 4 * EST_BYTES > MEM_AVAIL )); then
  echo "run_bench.sh: warning: inputs + output ($(gb $((4 * EST_BYTES)))) exceed available memory ($(gb $MEM_AVAIL));" >&2
  echo "  the page cache cannot hold them, so 'warm' numbers will partly be disk numbers." >&2
fi
SHM_MODE=none
if [[ -n $THREAD_METHODS ]]; then
  SHM_AVAIL=$(df -B1 --output=avail /dev/shm | tail -1 | tr -d ' ')
  ROOM=$(( SHM_AVAIL < MEM_AVAIL - 3 * EST_BYTES ? SHM_AVAIL : MEM_AVAIL - 3 * EST_BYTES ))
  if (( ROOM > 2 * EST_BYTES + 256 * 1024 * 1024 )); then SHM_MODE="cmp"
  elif (( ROOM > EST_BYTES + 256 * 1024 * 1024 )); then SHM_MODE=sha256
  else
    echo "run_bench.sh: warning: not enough room on /dev/shm (RAM) for a $(gb $EST_BYTES) output next to the cached inputs: skipping the thread runs" >&2
    THREAD_METHODS=""
  fi
fi

# ---------------------------------------------------------------------------------------------
# cleanup of everything this run writes except the models (and logs/reports)

cleanup() {
  rm -rf "$WORK"/out-* "$WORK"/baseline-out-* "$WORK"/floor "$WORK"/durability-out "$SHM" 2>/dev/null
  if [[ $CLEAN -eq 1 ]]; then rm -rf "$MODELS" "$CONFIGS"; fi
}
trap cleanup EXIT
trap 'echo "run_bench.sh: interrupted" >&2; exit 130' INT TERM

progress() { echo "[$(date +%H:%M:%S)] $*" >&2; }
REPORT=$WORK/report-$TAG-$(date +%Y%m%d-%H%M%S).md
: > "$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }
f2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
sum_sizes() { local t=0 f; for f in "$@"; do [[ -f $f ]] && t=$((t + $(stat -c %s "$f"))); done; echo $t; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
minof() { printf '%s\n' "$@" | sort -g | head -1; }
# busy_pct: CPU time used by all processes over 0.5 s, in % of one CPU (nothing of ours runs then)
busy_pct() {
  local a b
  read -r -a a < <(head -1 /proc/stat); sleep 0.5; read -r -a b < <(head -1 /proc/stat)
  awk -v u="$(( (b[1] + b[2] + b[3] + b[6] + b[7]) - (a[1] + a[2] + a[3] + a[6] + a[7]) ))" \
      -v t="$(( (b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) - (a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7]) ))" \
      -v n="$(nproc)" 'BEGIN { if (t > 0) printf "%.0f", 100 * n * u / t; else print 0 }'
}
# wait_idle: waits (up to --wait-idle s) for the others' CPU use to drop; sets BUSY to the last reading
wait_idle() {
  local waited=0
  BUSY=$(busy_pct)
  while (( WAIT_IDLE > 0 && BUSY > 15 && waited < WAIT_IDLE )); do
    (( waited == 0 )) && progress "  machine busy (${BUSY}% of a CPU used by other processes): waiting up to ${WAIT_IDLE}s"
    sleep 2; waited=$((waited + 3)); BUSY=$(busy_pct)
  done
  if (( waited > 0 )); then BUSY="others $BUSY% before (waited ${waited}s)"; else BUSY="others $BUSY% before"; fi
}
HZ=$(getconf CLK_TCK)
BUSY="-"
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# timed TIMEFILE CMD...: runs CMD under /usr/bin/time; sets T_S (wall s), T_KIB (max RSS KiB) and
# T_OTHER (CPU used by *other* processes during the run, % of one CPU); returns CMD's status
timed() {
  local tf=$1 j0 j1 rc u sy
  shift
  j0=$(busy_jiffies)
  /usr/bin/time -o "$tf" -f '%e %M %U %S' "$@"
  rc=$?
  j1=$(busy_jiffies)
  read -r T_S T_KIB u sy < <(tail -1 "$tf")
  T_OTHER=$(awk -v d="$((j1 - j0))" -v hz="$HZ" -v u="$u" -v s="$sy" -v w="$T_S" \
    'BEGIN { o = d / hz - u - s; if (o < 0) o = 0; if (w > 0) printf "%.0f", 100 * o / w; else print 0 }')
  return $rc
}
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# models and configs

mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.time "$LOGS"/*.strace
if models_ready; then
  progress "reusing models in $MODELS"
else
  progress "generating base + 2 fine-tunes ($TAG, ~$(gb $EST_BYTES) each) in $MODELS"
  rm -rf "$MODELS"
  mkdir -p "$MODELS"
  # shellcheck disable=SC2086,SC2015
  "$SMELT" dev make-model "$MODELS/base" $GEN_ARGS --seed 1 > "$LOGS/make-model.log" 2>&1 &&
    "$SMELT" dev make-model "$MODELS/ft1" --base "$MODELS/base" --delta-scale 0.01 --sparsity 0.5 --seed 2 >> "$LOGS/make-model.log" 2>&1 &&
    "$SMELT" dev make-model "$MODELS/ft2" --base "$MODELS/base" --delta-scale 0.01 --sparsity 0.5 --seed 3 >> "$LOGS/make-model.log" 2>&1 ||
    { tail -5 "$LOGS/make-model.log" >&2; rm -rf "$MODELS"; die "model generation failed (log: $LOGS/make-model.log)"; }
  echo "$GEN_ARGS" > "$MODELS/.complete"
fi
BASE=$MODELS/base FT1=$MODELS/ft1 FT2=$MODELS/ft2
model_files() { local d; for d in "$@"; do ls "$d"/*.safetensors; done; }
FILES3=$(model_files "$BASE" "$FT1" "$FT2")
FILES2=$(model_files "$BASE" "$FT1")    # slerp
FILES2F=$(model_files "$FT1" "$FT2")    # multislerp, karcher
# shellcheck disable=SC2086
IN3_BYTES=$(sum_sizes $FILES3)
# shellcheck disable=SC2086
IN2_BYTES=$(sum_sizes $FILES2)
# shellcheck disable=SC2086
IN2F_BYTES=$(sum_sizes $FILES2F)
# shellcheck disable=SC2086
# shellcheck disable=SC2046
MODEL_BYTES=$(sum_sizes $(model_files "$BASE"))

mkdir -p "$CONFIGS"
gta_config() {  # method extra-per-model-params
  cat <<EOF
merge_method: $1
base_model: $BASE
models:
  - model: $FT1
    parameters: {weight: 0.5$2}
  - model: $FT2
    parameters: {weight: 0.5$2}
dtype: bfloat16
EOF
}
for m in $ALL_METHODS; do
  case $m in
    linear) cat <<EOF ;;
merge_method: linear
models:
  - model: $BASE
    parameters: {weight: 0.5}
  - model: $FT1
    parameters: {weight: 0.5}
  - model: $FT2
    parameters: {weight: 0.5}
dtype: bfloat16
EOF
    task_arithmetic) gta_config "$m" "" ;;
    ties|dare_ties|dare_linear) gta_config "$m" ", density: 0.5" ;;
    della|della_linear) gta_config "$m" ", density: 0.5, epsilon: 0.1" ;;
    breadcrumbs|breadcrumbs_ties) gta_config "$m" ", density: 0.5, gamma: 0.01" ;;
    nuslerp) gta_config "$m" "" ;;
    multislerp) cat <<EOF ;;
merge_method: multislerp
models:
  - model: $FT1
    parameters: {weight: 0.5}
  - model: $FT2
    parameters: {weight: 0.5}
dtype: bfloat16
EOF
    karcher) cat <<EOF ;;
merge_method: karcher
models:
  - model: $FT1
  - model: $FT2
dtype: bfloat16
EOF
    sce) cat <<EOF ;;
merge_method: sce
base_model: $BASE
models:
  - model: $FT1
  - model: $FT2
parameters: {select_topk: 0.5}
dtype: bfloat16
EOF
    slerp) cat <<EOF ;;
merge_method: slerp
base_model: $BASE
models:
  - model: $BASE
  - model: $FT1
parameters: {t: 0.5}
dtype: bfloat16
EOF
    model_stock) cat <<EOF ;;
merge_method: model_stock
base_model: $BASE
models:
  - model: $FT1
  - model: $FT2
dtype: bfloat16
EOF
  esac > "$CONFIGS/$m.yml"
done
for m in $METHODS; do  # every config must plan before anything is timed
  "$SMELT" plan "$CONFIGS/$m.yml" > "$LOGS/plan-$m.log" 2>&1 ||
    { tail -5 "$LOGS/plan-$m.log" >&2; die "smelt plan $CONFIGS/$m.yml failed (log: $LOGS/plan-$m.log)"; }
done
# inputs a method reads: slerp base + ft1; multislerp and karcher ft1 + ft2; the others (nuslerp
# with its base too) all three
in_set() { case $1 in slerp) echo 2 ;; multislerp|karcher) echo 2f ;; *) echo 3 ;; esac; }
in_bytes() { case $(in_set "$1") in 2) echo "$IN2_BYTES" ;; 2f) echo "$IN2F_BYTES" ;; *) echo "$IN3_BYTES" ;; esac; }
in_read() { case $(in_set "$1") in 2) echo "$READ2" ;; 2f) echo "$READ2F" ;; *) echo "$READ3" ;; esac; }

# ---------------------------------------------------------------------------------------------
# measurement helpers

# run_smelt METHOD OUTDIR JOBS LOGNAME -> R_S (wall s), R_KIB (max RSS), R_OUT (output bytes); rc
run_smelt() {
  local m=$1 out=$2 j=$3 log=$LOGS/$4.log tf=$LOGS/$4.time
  rm -rf "$out"
  R_S="" R_KIB="" R_OUT=0
  if timed "$tf" "$SMELT" merge "$CONFIGS/$m.yml" "$out" -j "$j" --random-seed "$SEED" -q > "$log" 2>&1; then
    R_S=$T_S R_KIB=$T_KIB
    BUSY="$BUSY; others $T_OTHER% during"
    R_OUT=$(sum_sizes "$out"/*.safetensors)
    return 0
  fi
  echo "smelt merge $m -j$j failed (log $log):" >&2
  tail -5 "$log" >&2
  return 1
}

time_cmd() {  # prints wall seconds of "$@"
  local t0=$EPOCHREALTIME
  "$@"
  elapsed_since "$t0"
}
cat_files() { cat "$@" > /dev/null; }
cached_pct() {  # share of the input files' pages in the page cache
  # shellcheck disable=SC2086
  fincore -b -n -r -o RES,SIZE $FILES3 2>/dev/null |
    awk '{ r += $1; s += $2 } END { if (s > 0) printf "%.0f", 100 * r / s; else print "?" }'
}
# settle: before each timed step, wait for a quiet machine (wait_idle), then re-read the inputs.
# This VM runs DAMON with a pageout scheme that drops page-cache pages left idle for about a
# minute, so "warm" inputs go partly cold between steps; BUSY notes how much was still cached.
settle() {
  wait_idle
  local pct
  pct=$(cached_pct)
  # shellcheck disable=SC2086
  cat_files $FILES3
  BUSY="$BUSY, inputs ${pct}% cached"
}
dd_floor() {
  rm -f "$WORK/floor"
  dd if=/dev/zero of="$WORK/floor" bs=16M count="$DD_COUNT" conv=fdatasync status=none
}
# fio_floor: sequential O_DIRECT write of the output's size in 4 MiB blocks, 8 in flight, fsync at
# the end, into a new file on the work dir's file system (ftruncated, not preallocated, as smelt's
# output). Prints fio's job_runtime in s (it includes the end_fsync; fio's start-up of ~0.3 s is
# left out), "FAIL" if fio failed (e.g. no O_DIRECT on the file system; log: LOGS/fio-floor.log)
fio_floor() {
  local rt
  rm -f "$WORK/floor"
  if fio --name=floor --filename="$WORK/floor" --rw=write --bs=4M --iodepth=8 --ioengine="$FIO_ENGINE" \
      --direct=1 --end_fsync=1 --fallocate=none --size="$FIO_BYTES" --numjobs=1 \
      --output-format=json > "$LOGS/fio-floor.log" 2>&1; then
    rt=$(grep -o '"job_runtime"[[:space:]]*:[[:space:]]*[0-9]*' "$LOGS/fio-floor.log" | head -1 | grep -o '[0-9]*$')
  fi
  rm -f "$WORK/floor"
  if [[ -n ${rt:-} && $rt -gt 0 ]]; then awk -v ms="$rt" 'BEGIN { printf "%.3f", ms / 1000 }'; else echo FAIL; fi
}
# measure_floors -> READ3 READ2 READ2F, WRITE (fio, or dd when fio failed), WRITE_DD (best of 2
# each); details in FLOOR_RUNS
# shellcheck disable=SC2086  # the FILES* lists are meant to split
measure_floors() {
  local r3a r3b r2a r2b rfa rfb wa wb fa fb
  settle
  r3a=$(time_cmd cat_files $FILES3); r3b=$(time_cmd cat_files $FILES3)
  r2a=$(time_cmd cat_files $FILES2); r2b=$(time_cmd cat_files $FILES2)
  rfa=$(time_cmd cat_files $FILES2F); rfb=$(time_cmd cat_files $FILES2F)
  fa=$(fio_floor); fb=$(fio_floor)
  wa=$(time_cmd dd_floor); rm -f "$WORK/floor"
  wb=$(time_cmd dd_floor); rm -f "$WORK/floor"
  READ3=$(minof "$r3a" "$r3b") READ2=$(minof "$r2a" "$r2b") READ2F=$(minof "$rfa" "$rfb")
  WRITE_DD=$(minof "$wa" "$wb")
  WRITE_SRC=fio
  if [[ $fa != FAIL && $fb != FAIL ]]; then WRITE=$(minof "$fa" "$fb")
  elif [[ $fa != FAIL ]]; then WRITE=$fa
  elif [[ $fb != FAIL ]]; then WRITE=$fb
  else
    WRITE=$WRITE_DD WRITE_SRC="dd (fio FAILED: $LOGS/fio-floor.log)"
    echo "run_bench.sh: warning: fio failed (log $LOGS/fio-floor.log); the floor uses dd's write time" >&2
  fi
  FLOOR_RUNS="[$BUSY] read 3 inputs $r3a / $r3b s, read base + ft1 $r2a / $r2b s, read ft1 + ft2 $rfa / $rfb s, write fio $fa / $fb s, write dd conv=fdatasync $wa / $wb s"
}

# ---------------------------------------------------------------------------------------------
# run

START=$EPOCHREALTIME
DD_COUNT=$(( (MODEL_BYTES + 16 * 1024 * 1024 - 1) / (16 * 1024 * 1024) ))
FIO_BYTES=$(( (MODEL_BYTES + 4 * 1024 * 1024 - 1) / (4 * 1024 * 1024) * (4 * 1024 * 1024) ))  # whole 4 MiB blocks
declare -A J1_LOAD J2_LOAD B_LOAD FLOOR S_TIME S_ALL S_RSS S_OUT S_LOAD B_TIME B_RSS B_NOTE J1 J2 J1_ALL J2_ALL SAME

progress "warming the page cache (cat inputs twice)"
# shellcheck disable=SC2086
cat_files $FILES3
# shellcheck disable=SC2086
cat_files $FILES3

WARMUP_NOTE="skipped"
if [[ $WARMUP -eq 1 ]]; then
  progress "warm-up merge (linear, untimed in the table)"
  if run_smelt linear "$WORK/out-warmup" "$JOBS" warmup; then WARMUP_NOTE="$R_S s, $(mib "$R_KIB") MiB"; else WARMUP_NOTE="FAILED"; fi
  rm -rf "$WORK/out-warmup"
fi

progress "measuring the floor (cat inputs > /dev/null warm; fio direct write of $FIO_BYTES bytes; dd ${DD_COUNT}x16M conv=fdatasync)"
measure_floors
FLOOR_BEFORE=$FLOOR_RUNS

for m in $METHODS; do
  times=() rss=()
  for ((r = 1; r <= REPS; r++)); do
    progress "smelt $m -j$JOBS (run $r/$REPS)"
    settle
    if run_smelt "$m" "$WORK/out-$m" "$JOBS" "smelt-$m-j$JOBS-r$r"; then
      S_LOAD[$m]="${S_LOAD[$m]:-}[$BUSY] "
      times+=("$R_S") rss+=("$R_KIB")
      S_OUT[$m]=$R_OUT
    fi
    rm -rf "$WORK/out-$m"
  done
  if [[ ${#times[@]} -eq $REPS ]]; then
    S_TIME[$m]=$(minof "${times[@]}")
    S_RSS[$m]=$(printf '%s\n' "${rss[@]}" | sort -g | tail -1)
    S_ALL[$m]="${times[*]}"
  else
    S_TIME[$m]=FAIL S_RSS[$m]=FAIL S_ALL[$m]="${times[*]:-} (failed run: see $LOGS)"
  fi
done

progress "re-measuring the floor after the smelt runs (drift check)"
READ3_0=$READ3 READ2_0=$READ2 READ2F_0=$READ2F WRITE_0=$WRITE WRITE_DD_0=$WRITE_DD WRITE_SRC_0=$WRITE_SRC
measure_floors
FLOOR_AFTER=$FLOOR_RUNS
READ3=$READ3_0 READ2=$READ2_0 READ2F=$READ2F_0 WRITE=$WRITE_0 WRITE_DD=$WRITE_DD_0 WRITE_SRC=$WRITE_SRC_0

for m in $BASELINE; do
  progress "per-tensor numpy baseline: $m"
  settle
  B_LOAD[$m]=$BUSY
  out=$WORK/baseline-out-$m log=$LOGS/baseline-$m.log
  rm -rf "$out"
  if OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timed "$LOGS/baseline-$m.time" \
      "$PY" "$BASELINE_PY" "$CONFIGS/$m.yml" "$out" --seed "$SEED" --select "$SELECT" --read "$READ" > "$log" 2>&1; then
    B_TIME[$m]=$T_S B_RSS[$m]=$T_KIB
    B_LOAD[$m]="${B_LOAD[$m]}; others $T_OTHER% during"
    B_NOTE[$m]=$(grep -o 'peak anon [0-9]* MiB' "$log" | head -1)
  else
    B_TIME[$m]=FAIL B_RSS[$m]=FAIL
    echo "baseline $m failed (log $log):" >&2
    tail -5 "$log" >&2
  fi
  rm -rf "$out"
done

if [[ -n $THREAD_METHODS ]]; then
  mkdir -p "$SHM"
  for m in $THREAD_METHODS; do
    t1=() t2=() SAME[$m]="?"
    for ((r = 1; r <= REPS; r++)); do
      progress "threads: $m -j1 / -j2 on /dev/shm (run $r/$REPS)"
      settle
      run_smelt "$m" "$SHM/$m-j1" 1 "shm-$m-j1-r$r" && t1+=("$R_S") && J1_LOAD[$m]="${J1_LOAD[$m]:-}[$BUSY] "
      if [[ $SHM_MODE == sha256 ]]; then
        sum1=$(cat "$SHM/$m-j1"/*.safetensors 2>/dev/null | sha256sum); rm -rf "$SHM/$m-j1"
      fi
      settle
      run_smelt "$m" "$SHM/$m-j2" 2 "shm-$m-j2-r$r" && t2+=("$R_S") && J2_LOAD[$m]="${J2_LOAD[$m]:-}[$BUSY] "
      same=no
      if [[ $SHM_MODE == sha256 ]]; then
        [[ -n $(ls "$SHM/$m-j2"/*.safetensors 2>/dev/null) && $sum1 == "$(cat "$SHM/$m-j2"/*.safetensors | sha256sum)" ]] && same="yes (sha256)"
      else
        files1=$(cd "$SHM/$m-j1" 2>/dev/null && ls ./*.safetensors 2>/dev/null)
        files2=$(cd "$SHM/$m-j2" 2>/dev/null && ls ./*.safetensors 2>/dev/null)
        if [[ -n $files1 && $files1 == "$files2" ]]; then
          same=yes
          for f in $files1; do cmp -s "$SHM/$m-j1/$f" "$SHM/$m-j2/$f" || same=no; done
        fi
      fi
      [[ ${SAME[$m]} == "?" || ${SAME[$m]} == yes* ]] && SAME[$m]=$same
      rm -rf "$SHM/$m-j1" "$SHM/$m-j2"
    done
    J1[$m]=$( [[ ${#t1[@]} -gt 0 ]] && minof "${t1[@]}" || echo FAIL )
    J2[$m]=$( [[ ${#t2[@]} -gt 0 ]] && minof "${t2[@]}" || echo FAIL )
    J1_ALL[$m]="${t1[*]:-}" J2_ALL[$m]="${t2[*]:-}"
  done
  rm -rf "$SHM"
fi

progress "durability check (strace: fdatasync before the rename into place)"
DURABLE="not checked (strace not installed)"
if command -v strace > /dev/null; then
  out=$WORK/durability-out
  rm -rf "$out"
  if strace -f -y -qq -o "$LOGS/durability.strace" -e trace=fsync,fdatasync,rename,renameat,renameat2 \
      "$SMELT" merge "$CONFIGS/linear.yml" "$out" -j "$JOBS" -q > "$LOGS/durability.log" 2>&1; then
    DURABLE=$(awk '
      /fdatasync\(|fsync\(/ { if (match($0, /<[^>]*>/)) { p = substr($0, RSTART + 1, RLENGTH - 2); n = split(p, a, "/"); synced[a[n]] = 1 } }
      /rename/ && /safetensors/ {
        if (match($0, /"[^"]*", [^"]*"[^"]*safetensors"/)) {
          s = substr($0, RSTART, RLENGTH); split(s, q, "\""); n1 = split(q[2], a, "/"); n2 = split(q[4], b, "/")
          if (b[n2] ~ /^model.*\.safetensors$/) { total++; if (a[n1] in synced) ok++; else bad = bad " " b[n2] }
        }
      }
      END {
        if (total == 0) print "UNKNOWN (no rename of a model file seen)"
        else if (ok == total) printf "yes (%d model file(s) fdatasync()ed before the rename)\n", total
        else printf "NO (renamed without a prior fsync/fdatasync:%s)\n", bad
      }' "$LOGS/durability.strace")
  else
    DURABLE="not checked (the traced merge failed: $LOGS/durability.log)"
  fi
  rm -rf "$out"
fi
TOTAL_S=$(elapsed_since "$START")

# ---------------------------------------------------------------------------------------------
# report

# results-<shape>-s<scale>.tsv: method, smelt s, peak RSS KiB, smelt binary mtime; rows of methods
# not run now are kept
RES=$WORK/results-$BASE_TAG-s$SCALE.tsv
{
  [[ -f $RES ]] && awk -F'\t' -v run=" $METHODS " 'index(run, " " $1 " ") == 0' "$RES"
  for m in $METHODS; do printf '%s\t%s\t%s\t%s\n' "$m" "${S_TIME[$m]}" "${S_RSS[$m]}" "$(stat -c %Y "$SMELT")"; done
} > "$RES.new" && mv "$RES.new" "$RES"

say "# smelt benchmark: $TAG (scale $SCALE$([[ $QUICK -eq 1 ]] && echo ", quick"))"
say ""
say "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) CPUs, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; work dir $WORK ($(df --output=source "$WORK" | tail -1))"
say "- smelt: $SMELT ($("$SMELT" --version 2>/dev/null | head -1); binary mtime $(date -u -r "$SMELT" '+%Y-%m-%d %H:%M:%S UTC'))"
say "- model: $PARAMS parameters (estimated), model file $MODEL_BYTES bytes, embed_tokens $EMBED_BYTES bytes; inputs: base + 2 fine-tunes (delta-scale 0.01, sparsity 0.5); slerp reads base + ft1, multislerp and karcher ft1 + ft2, the others all three"
say "- smelt runs: -j$JOBS, --random-seed $SEED, $REPS run(s) per row (fastest shown); warm-up merge: $WARMUP_NOTE"
say "- floor = max(read, write) (smelt reads and writes at the same time): read = cat the method's inputs > /dev/null (page cache warm), best of 2; write = fio $(fio --version) --rw=write --direct=1 --bs=4M --iodepth=8 --ioengine=$FIO_ENGINE --end_fsync=1 --size=$FIO_BYTES (job_runtime), best of 2"
say "  - used: read 3 inputs $READ3 s, read base + ft1 $READ2 s, read ft1 + ft2 $READ2F s, write $WRITE s ($WRITE_SRC); for information, dd bs=16M count=$DD_COUNT conv=fdatasync (buffered write + fdatasync, the floor before issue 19): $WRITE_DD s"
say "  - before the smelt rows: $FLOOR_BEFORE"
say "  - after the smelt rows (drift check, not used): $FLOOR_AFTER"
[[ -n $BASELINE ]] && say "- baseline: per-tensor numpy baseline (bench/numpy_baseline.py; numpy $($PY -c 'import numpy; print(numpy.__version__)' 2>/dev/null), 1 thread, --select $SELECT, --read $READ, whole 5 GB shard in RAM, fsync)"
say ""
say "| method | smelt s | floor s | ratio | peak RSS MiB | GB/s | baseline s | speed-up | baseline RSS MiB | memory ratio |"
say "|---|---|---|---|---|---|---|---|---|---|"
for m in $METHODS; do
  inb=$(in_bytes "$m")
  rd=$(in_read "$m")
  FLOOR[$m]=$(awk -v a="$rd" -v b="$WRITE" 'BEGIN { printf "%.3f", (a + 0 > b + 0) ? a : b }')
  floor=$(f2 "${FLOOR[$m]}")
  s=${S_TIME[$m]} k=${S_RSS[$m]}
  if [[ $s == FAIL ]]; then ratio=- rssm=FAIL gbs=-; else
    ratio=$(div "$s" "${FLOOR[$m]}"); rssm=$(mib "$k")
    gbs=$(awk -v i="$inb" -v o="${S_OUT[$m]:-0}" -v t="$s" 'BEGIN { if (t > 0) printf "%.2f", (i + o) / t / 1e9; else print "n/a" }')
  fi
  bs=${B_TIME[$m]:--} bk=${B_RSS[$m]:--} sp=- mr=- bm=-
  if [[ $bs != - && $bs != FAIL && $s != FAIL ]]; then sp="$(div "$bs" "$s")x"; bm=$(mib "$bk"); mr="$(div "$bk" "$k")x"; fi
  [[ $bs == FAIL ]] && bm=FAIL
  say "| $m | $s | $floor | $ratio | $rssm | $gbs | $bs | $sp | $bm | $mr |"
done
say ""
say "floor s = max(read of the method's inputs (slerp, multislerp, karcher: 2; others: 3), fio direct write of the output); ratio = smelt s / floor s; GB/s = (input + output bytes) / smelt s;"
say "speed-up = baseline s / smelt s; memory ratio = baseline peak RSS / smelt peak RSS."
if [[ -n $BASELINE ]]; then
  notes=""
  for m in $BASELINE; do [[ -n ${B_NOTE[$m]:-} ]] && notes+="$m ${B_NOTE[$m]#peak anon }, "; done
  say "Baseline peak RSS includes the memory-mapped input pages it touched (as mergekit's does); its sampled peak anonymous memory: ${notes%, }."
fi
say ""
if [[ -n $THREAD_METHODS ]]; then
  say "Threads (output on /dev/shm, inputs in page cache):"
  say ""
  say "| method | -j1 s | -j2 s | speed-up | -j1 == -j2 |"
  say "|---|---|---|---|---|"
  for m in $THREAD_METHODS; do
    sp=-; [[ ${J1[$m]} != FAIL && ${J2[$m]} != FAIL ]] && sp="$(div "${J1[$m]}" "${J2[$m]}")x"
    say "| $m | ${J1[$m]} | ${J2[$m]} | $sp | ${SAME[$m]} |"
  done
  say ""
fi
say "All runs (s), each with [CPU use of other processes (% of one CPU) before and during it; share of the input pages still in the page cache before the re-read]:"
for m in $METHODS; do say "- $m -j$JOBS: ${S_ALL[$m]} ${S_LOAD[$m]% }"; done
for m in $BASELINE; do say "- $m baseline: ${B_TIME[$m]} [${B_LOAD[$m]}]"; done
for m in $THREAD_METHODS; do say "- $m on /dev/shm: -j1 ${J1_ALL[$m]:-} ${J1_LOAD[$m]% }; -j2 ${J2_ALL[$m]:-} ${J2_LOAD[$m]% }"; done
say ""

# targets
say "Targets$([[ $QUICK -eq 1 ]] && echo " (quick run: tiny model, not meaningful)"):"
met_list="" miss_list=""
for m in $METHODS; do
  case $m in linear|task_arithmetic|slerp|nuslerp|model_stock|multislerp|karcher) lim=1.2 ;; *) lim=2.0 ;; esac
  s=${S_TIME[$m]}
  if [[ $s == FAIL ]]; then miss_list+=" $m(failed)"; continue; fi
  r=$(div "$s" "${FLOOR[$m]}")
  if le "$r" "$lim"; then met_list+=" $m($r<=$lim)"; else miss_list+=" $m($r>$lim)"; fi
done
say "- time / floor (<= 1.2 for linear, task_arithmetic, slerp, nuslerp, model_stock, multislerp, karcher; <= 2.0 for the others): met:${met_list:- none}; missed:${miss_list:- none}"
met_list="" miss_list=""
for m in $METHODS; do
  k=${S_RSS[$m]}
  if [[ $k == FAIL ]]; then miss_list+=" $m(failed)"; elif (( k <= 512 * 1024 )); then met_list+=" $m($(mib "$k"))"; else miss_list+=" $m($(mib "$k"))"; fi
done
say "- peak RSS <= 512 MiB: met:${met_list:- none}; missed:${miss_list:- none}"
cmp_done=0
for other in $((SCALE * 2)) $(( SCALE % 2 == 0 ? SCALE / 2 : 0 )); do
  OTHER_RES=$WORK/results-$BASE_TAG-s$other.tsv
  [[ $other -ge 1 && -f $OTHER_RES ]] || continue
  cmp_done=1
  lo=$(( other < SCALE ? other : SCALE )) hi=$(( other < SCALE ? SCALE : other ))
  line="" other_bin=""
  while IFS=$'\t' read -r m s k mt; do
    [[ ${mt:-} != "$(stat -c %Y "$SMELT")" ]] && other_bin=" (NOTE: some scale-$other rows came from another smelt binary)"
    [[ -n ${S_RSS[$m]:-} && ${S_RSS[$m]} != FAIL && $k != FAIL ]] || continue
    if [[ $other -lt $SCALE ]]; then klo=$k khi=${S_RSS[$m]}; else klo=${S_RSS[$m]} khi=$k; fi
    verdict=$(awk -v a="$klo" -v b="$khi" 'BEGIN { if (b <= a * 1.10 + 8192) print "unchanged"; else print "GREW" }')
    line+=" $m $(mib "$klo")->$(mib "$khi") $verdict;"
  done < "$OTHER_RES"
  say "- peak RSS at scale $lo vs $hi (unchanged = within 10% + 8 MiB; scale-$other numbers from $(date -u -r "$OTHER_RES" '+%H:%M UTC'))$other_bin:${line%;}"
done
[[ $cmp_done -eq 0 ]] && say "- peak RSS unchanged when the model doubles: not checked (run again with --scale $((SCALE * 2)) to compare)"
if [[ -n $THREAD_METHODS ]]; then
  met_list="" miss_list="" same_list=""
  for m in $THREAD_METHODS; do
    sp=$(div "${J1[$m]}" "${J2[$m]}")
    if [[ $sp != n/a ]] && le 1.7 "$sp"; then met_list+=" $m(${sp}x)"; else miss_list+=" $m(${sp}x)"; fi
    same_list+=" $m: ${SAME[$m]};"
  done
  say "- 2 threads >= 1.7x one thread: met:${met_list:- none}; missed:${miss_list:- none}"
  say "- -j1 and -j2 outputs bit-identical ($SHM_MODE):${same_list%;}"
fi
say "- output durable: $DURABLE"
say ""
say "Total benchmark time: $(f2 "$TOTAL_S") s. Report: $REPORT; logs: $LOGS"
