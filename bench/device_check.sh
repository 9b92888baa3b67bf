#!/usr/bin/env bash
# The GPU check: everything only a GPU can show, in one short script.
#
#   bench/device_check.sh [--quick] [--runs N] [--label TEXT] DATA.npz [OUTDIR]
#
# On a fresh H100/H200 machine with the project at its root and nothing
# installed (python3 with torch, triton, numpy, pytest), in this order: the
# environment; bench/train.py, the headline, for the seed recipe and then the
# record recipe (airbench94-muon: eager and compile+triton) (N runs of each
# variant on DATA, then one profiled run per variant: host and wall ms/step, GPU
# kernel ms/step, kernels and launch calls per step, top kernels and host ops, a
# Chrome trace); the kernel tests on CUDA; bench/kernels.py. Logs, JSON,
# traces.tar and csv.tar (the rows appended to bench/results/*.csv) go to
# OUTDIR (default: $OUT when set, else out/device_check): 8 files at most, as
# the device tool brings back. A short summary, profile lines included, is
# printed last. Stage limits (seed train + record train + tests + kernel bench):
#   full:    240 + 100 + 60 + 50 s = 450 s, under 8 minutes with the environment;
#            seed: eager, compile+triton, compile+triton+cudagraphs, compile;
#            record: eager, compile+triton; 10 runs each (the accuracy
#            comparison needs 10), 20 profiled steps; the variant most likely
#            cut by a limit comes last
#   --quick: 90 + 50 + 30 + 25 s = 195 s, under 4 minutes; eager and
#            compile+triton, 2 runs, 15 profiled steps, fewer kernel tests and ops
# Every stage has its own time limit; one failing stage does not stop the rest,
# and a failing variant does not stop the other variants.
# DEVICE_CHECK_TRAIN_ARGS (extra bench/train.py arguments, after the script's own:
# they win) and DEVICE_CHECK_TEST_ARGS (extra pytest arguments) let a CPU dry run
# exercise the plumbing with tiny sizes. PYTHON is the interpreter every stage runs
# (default: python3 on PATH), e.g. PYTHON=.venv/bin/python for an unactivated
# virtual environment. DEVICE_CHECK_TIME_SCALE (a whole number, default 1)
# multiplies every stage limit: a CPU dry run on a busy machine is no timing test.
set -u
cd "$(dirname "$0")/.."

quick=0; runs=""; label=""; data=""; outdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs="$2"; shift ;;
    --label) label="$2"; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) if [ -z "$data" ]; then data="$1"; elif [ -z "$outdir" ]; then outdir="$1"; else
         echo "device_check.sh: unexpected argument $1" >&2; exit 2; fi ;;
  esac
  shift
done
if [ -z "$data" ] || [ ! -f "$data" ]; then
  echo "device_check.sh: give an existing DATA.npz (python run.py convert SRC DATA.npz writes one from a torchvision CIFAR-10 root or an image folder)" >&2
  exit 2
fi
outdir="${outdir:-${OUT:-out/device_check}}"
mkdir -p "$outdir"
label="${label:-$(basename "$data")}"
rm -rf "$outdir/traces" "$outdir/traces.tar" "$outdir/csv.tar"; : > "$outdir/train.log"; : > "$outdir/kernels.log"   # a rerun starts clean
record_extra=(--recipe airbench94-muon --variants eager,compile+triton)
if [ "$quick" = 1 ]; then   # the headline pair only, fewer kernel tests and ops
  runs="${runs:-2}"; t_train=90; t_record=50; t_tests=30; t_kbench=25
  test_select="(kernels and not bfloat16) or (integration and not compile)"
  train_extra=(--variants eager,compile+triton --profile-steps 15)
  record_extra+=(--profile-steps 15)
  kbench_extra=(--only affine_gelu,squeeze_excite)
else
  runs="${runs:-10}"; t_train=240; t_record=100; t_tests=60; t_kbench=50
  test_select="kernels or (integration and not compile)"
  train_extra=(--variants eager,compile+triton,compile+triton+cudagraphs,compile --profile-steps 20)
  record_extra+=(--profile-steps 20)
  kbench_extra=()
fi
scale="${DEVICE_CHECK_TIME_SCALE:-1}"
case "$scale" in ''|*[!0-9]*|0) echo "device_check.sh: DEVICE_CHECK_TIME_SCALE must be a whole number >= 1, got '$scale'" >&2; exit 2 ;; esac
t_train=$(( t_train * scale )); t_record=$(( t_record * scale )); t_tests=$(( t_tests * scale ))
t_kbench=$(( t_kbench * scale ))
PY="${PYTHON:-python3}"
parallel=()
"$PY" -c "import xdist" 2>/dev/null && parallel=(-n 8)
export PYTHONUNBUFFERED=1
start=$(date +%s)
stage_status=()
run_stage() {  # name seconds log command...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s) ==" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  stage_status+=("$name: exit $rc, $(( $(date +%s) - t0 )) s")
  echo "== $name: exit $rc ==" >> "$log"
}

# 1. Environment.
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
  git rev-parse HEAD 2>/dev/null || echo "no git"
} > "$outdir/env_and_tests.log" 2>&1

# 2. Whole-run benchmark with a profiled window per variant: the headline, first; then the record recipe.
run_stage "bench/train.py" $t_train "$outdir/train.log" \
  "$PY" bench/train.py --data "$data" --data-label "$label" --runs "$runs" --json "$outdir/train.json" \
    --trace-dir "$outdir/traces" "${train_extra[@]}" ${DEVICE_CHECK_TRAIN_ARGS:-}
run_stage "bench/train.py --recipe airbench94-muon" $t_record "$outdir/train.log" \
  "$PY" bench/train.py --data "$data" --data-label "$label" --runs "$runs" \
    --json "$outdir/train_airbench94-muon.json" --trace-dir "$outdir/traces" "${record_extra[@]}" \
    ${DEVICE_CHECK_TRAIN_ARGS:-}
# The traces in one file (the device tool brings back 8 files of 16 MiB at most).
if [ -d "$outdir/traces" ]; then
  traces=(); bytes=0
  for f in "$outdir"/traces/*.json.gz; do
    [ -f "$f" ] || continue
    size=$(stat -c %s "$f")
    if [ $(( bytes + size )) -le 15000000 ]; then traces+=("$(basename "$f")"); bytes=$(( bytes + size ))
    else echo "traces.tar: left out $(basename "$f") ($size bytes)" >> "$outdir/train.log"; fi
  done
  [ ${#traces[@]} -gt 0 ] && tar -cf "$outdir/traces.tar" -C "$outdir/traces" "${traces[@]}"
  rm -rf "$outdir/traces"
fi

# 3. Kernel tests on CUDA (the same tests CI runs in the interpreter).
run_stage "kernel tests (CUDA)" $t_tests "$outdir/env_and_tests.log" \
  "$PY" -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/ -k "$test_select" ${DEVICE_CHECK_TEST_ARGS:-}

# 4. Kernel benchmark.
run_stage "bench/kernels.py" $t_kbench "$outdir/kernels.log" \
  "$PY" bench/kernels.py "${kbench_extra[@]}"

csvs=(); for f in train.csv kernels.csv; do [ -f "bench/results/$f" ] && csvs+=("$f"); done
[ ${#csvs[@]} -gt 0 ] && tar -cf "$outdir/csv.tar" -C bench/results "${csvs[@]}"

{
  echo "================ device check summary ($(( $(date +%s) - start )) s) ================"
  head -n 4 "$outdir/env_and_tests.log"
  printf '%s\n' "${stage_status[@]}"
  echo "--- bench/train.py (details: train.log, train*.json, traces.tar, csv.tar) ---"
  sed -n '/^bench\/train.py on/,/^$/p' "$outdir/train.log"
  grep -E "^profile |\] (FAILED|profiling FAILED)" "$outdir/train.log"
  if [ "$(grep -c '^bench/train.py on' "$outdir/train.log")" -lt 2 ]; then   # a stage hit its limit
    echo "(a recipe has no final table: its stage stopped early; per-variant lines as printed, partial JSON)"
    grep -E "^(\[|recipe: )" "$outdir/train.log"
  fi
  echo "--- kernel tests ---"
  grep -E "passed|failed|error" "$outdir/env_and_tests.log" | tail -n 2
  echo "--- bench/kernels.py ---"
  sed -n '/^op /,$p' "$outdir/kernels.log" | head -n 40
} | tee "$outdir/summary.txt"
