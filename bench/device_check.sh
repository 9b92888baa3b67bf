#!/usr/bin/env bash
# The GPU check: everything only a GPU can show, in one short script.
#
#   bench/device_check.sh [--quick] [--runs N] [--label TEXT] DATA.npz [OUTDIR]
#
# On a fresh H100/H200 machine with the project at its root and nothing
# installed (python3 with torch, triton, numpy, pytest), in this order, by value:
# the environment; bench/train.py for the seed recipe (the headline, eager vs
# compile+triton, first; then the extra variants) and then for the record recipe
# (airbench94-muon: eager and compile+triton) (per variant: the launches of one
# training step, checked against the variant's name; N runs on DATA; one
# profiled run: host and wall ms/step, GPU kernel ms/step, kernels and launch
# calls per step, top kernels and host ops, a Chrome trace); the kernel tests
# on CUDA; bench/kernels.py. Logs, JSON, traces.tar and csv.tar (the rows
# appended to bench/results/*.csv) go to OUTDIR (default: $OUT when set, else
# out/device_check): 8 files at most, as the device tool brings back. A short
# summary is printed last; under each compiled variant's row it prints the GPU
# plan's predicted seconds of training per run (bench/gpu_plan.py --beside, from the
# newest bench/results/gpu_plan-*/plan.csv), so the first GPU window tests the model.
#
# Nothing measured is lost when a stage hits its limit: bench/train.py rewrites
# its JSON, appends its CSV row and prints a "row ..." line as each variant
# ends; the kernel tests append one "test passed|failed|skipped|error: ..." line
# per test to env_and_tests.log as each ends (bench/pytest_outcomes.py; their
# pytest output goes to kernels.log). The summary is built from those lines, so
# it shows every finished variant and test of a cut stage.
#
# Stage limits (seed train + record train, also each hiverge's + tests + kernel bench), sized for a
# fresh machine (empty Triton and Inductor caches). Estimates, from the last H200
# check and the NOTES.md predictions: eager ~6 s per seed run, ~2.5 s per record
# run; a compiled variant ~3 s and ~1.5 s; a cold Inductor compile of a recipe's
# step, update and evaluation 60-90 s, a later compiled variant of the same
# recipe less (Inductor's on-disk graph cache); profiling ~5 s per variant.
#   full:    170 + 100 + 100 + 60 + 40 s = 470 s, about 8.5 minutes with the environment;
#            seed: eager, compile+triton (about 60 + 120 s for 10 runs each, the
#            headline, inside the limit), then compile+triton+cudagraphs and
#            compile, which a cold machine may not reach (they come last: a cut
#            loses only them); record: eager, compile+triton (about 30 + 110 s);
#            hiverge (the 2025 record, its stage after the record's, under the same
#            limit): eager, compile+triton (its default on CUDA: our BatchNorm + SiLU
#            kernels), then compile (Inductor's own code; last: a cut loses only it);
#            10 runs each (the accuracy comparison needs 10), 20 profiled steps
#   --quick: 90 + 50 + 50 + 30 + 20 s = 240 s, about 4 minutes; eager and the
#            default compiled variant (compile+triton), 2 runs, 15
#            profiled steps, fewer kernel tests and ops
# The kernel tests' selection is sized by what a fresh GPU compiles: each test
# compiles its own kernel specialisations (dtype, block sizes, divisibility of
# the sizes), about 1-2 per test case at ~1 s each, with 8 pytest-xdist workers
# on 16 cores, plus ~15 s of start-up: full: the kernel tests without bfloat16
# and the uncompiled integration tests (~200 cases, ~40 s); --quick: the float16
# kernel tests only (~80 cases, ~20 s), float16 being what the GPU trains in.
# Every stage has its own time limit; one failing stage does not stop the rest,
# and a failing variant does not stop the other variants.
# DEVICE_CHECK_TRAIN_ARGS (extra bench/train.py arguments, after the script's own:
# they win) and DEVICE_CHECK_TEST_ARGS (extra pytest arguments) let a CPU dry run
# exercise the plumbing with tiny sizes. PYTHON is the interpreter every stage runs
# (default: python3 on PATH), e.g. PYTHON=.venv/bin/python for an unactivated
# virtual environment. DEVICE_CHECK_TIME_SCALE (a whole number, default 1)
# multiplies every stage limit; 0 lifts them all: a CPU dry run on a busy machine is
# no timing test (tests/test_bench_device_check.py runs with 0).
# DEVICE_CHECK_LIMITS="SEED RECORD TESTS KBENCH" (seconds, before the scale) sets
# the stage limits themselves, e.g. to cut a stage on purpose in a dry run.
# BENCH_TRAIN_KILL_AFTER_VARIANTS=K makes bench/train.py kill itself (SIGKILL, as a
# limit does) after its K-th variant: a dry run cuts its stages deterministically.
set -u
cd "$(dirname "$0")/.."

quick=0; runs=""; label=""; data=""; outdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs="$2"; shift ;;
    --label) label="$2"; shift ;;
    -h|--help) sed -n "2,$(( $(grep -n '^set -u' "$0" | cut -d: -f1) - 1 ))p" "$0"; exit 0 ;;
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
hiverge_extra=(--recipe hiverge --variants eager,compile+triton,compile)   # compile+triton: its CUDA default
if [ "$quick" = 1 ]; then   # the headline pair only, fewer kernel tests and ops
  runs="${runs:-2}"; t_train=90; t_record=50; t_tests=30; t_kbench=20
  test_select="kernels and float16 and not bfloat16"
  train_extra=(--variants eager,compile+triton --profile-steps 15)
  record_extra+=(--profile-steps 15)
  hiverge_extra=(--recipe hiverge --variants eager,compile+triton --profile-steps 15)
  kbench_extra=(--only batch_norm_gelu,pool_batch_norm_gelu,squeeze_excite)   # the training step's heaviest kernels of ours
else
  runs="${runs:-10}"; t_train=170; t_record=100; t_tests=60; t_kbench=40
  test_select="(kernels and not bfloat16) or (integration and not compile)"
  train_extra=(--variants eager,compile+triton,compile+triton+cudagraphs,compile --profile-steps 20)
  record_extra+=(--profile-steps 20)
  hiverge_extra+=(--profile-steps 20)
  kbench_extra=()
fi
if [ -n "${DEVICE_CHECK_LIMITS:-}" ]; then
  read -r t_train t_record t_tests t_kbench extra <<< "$DEVICE_CHECK_LIMITS"
  for t in "$t_train" "$t_record" "$t_tests" "$t_kbench"; do
    case "$t" in ''|*[!0-9]*|0) echo "device_check.sh: DEVICE_CHECK_LIMITS must be four whole numbers >= 1 (seed record tests kbench seconds), got '$DEVICE_CHECK_LIMITS'" >&2; exit 2 ;; esac
  done
fi
scale="${DEVICE_CHECK_TIME_SCALE:-1}"
case "$scale" in ''|*[!0-9]*) echo "device_check.sh: DEVICE_CHECK_TIME_SCALE must be a whole number (0: no limits), got '$scale'" >&2; exit 2 ;; esac
t_train=$(( t_train * scale )); t_record=$(( t_record * scale )); t_tests=$(( t_tests * scale ))
t_kbench=$(( t_kbench * scale ))
PY="${PYTHON:-python3}"
parallel=()
# 8 workers where pytest-xdist is installed and there is a GPU (a CPU dry run stays one process)
"$PY" -c "import xdist, torch; assert torch.cuda.is_available()" 2>/dev/null && parallel=(-n 8)
export PYTHONUNBUFFERED=1
start=$(date +%s)
stage_status=()
run_stage() {  # name seconds log command...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s)
  echo "== $name ($([ "$limit" = 0 ] && echo "no limit" || echo "limit ${limit}s")) ==" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1      # a limit of 0: none
  local rc=$? cut=""
  { [ $rc = 124 ] || [ $rc = 137 ]; } && cut=" (CUT at its limit: what it finished is kept)"
  stage_status+=("$name: exit $rc, $(( $(date +%s) - t0 )) s$cut")
  echo "== $name: exit $rc ==" >> "$log"
}

# 1. Environment.
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
  git rev-parse HEAD 2>/dev/null || echo "no git"
} > "$outdir/env_and_tests.log" 2>&1

# 2. Whole-run benchmark with a profiled window per variant: the seed recipe's headline
#    (eager vs compile+triton) first, then its extra variants; then the record recipe.
run_stage "bench/train.py" $t_train "$outdir/train.log" \
  "$PY" bench/train.py --data "$data" --data-label "$label" --runs "$runs" --json "$outdir/train.json" \
    --trace-dir "$outdir/traces" "${train_extra[@]}" ${DEVICE_CHECK_TRAIN_ARGS:-}
run_stage "bench/train.py --recipe airbench94-muon" $t_record "$outdir/train.log" \
  "$PY" bench/train.py --data "$data" --data-label "$label" --runs "$runs" \
    --json "$outdir/train_airbench94-muon.json" --trace-dir "$outdir/traces" "${record_extra[@]}" \
    ${DEVICE_CHECK_TRAIN_ARGS:-}
# The 2025 record recipe: eager and its default compiled variant (compile+triton), then (not with
# --quick) Inductor's own code (compile), under the record recipe's limit.
run_stage "bench/train.py --recipe hiverge" $t_record "$outdir/train.log" \
  "$PY" bench/train.py --data "$data" --data-label "$label" --runs "$runs" \
    --json "$outdir/train_hiverge.json" --trace-dir "$outdir/traces" "${hiverge_extra[@]}" \
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

# 3. Kernel tests on CUDA (the same tests CI runs in the interpreter): one line per test
#    in env_and_tests.log as it ends, pytest's own output in kernels.log.
echo "== kernel tests (CUDA), -k '$test_select' (limit ${t_tests}s): one line per test as it ends; output in kernels.log ==" \
  >> "$outdir/env_and_tests.log"
run_stage "kernel tests (CUDA)" $t_tests "$outdir/kernels.log" \
  "$PY" -m pytest -q -p no:cacheprovider -p bench.pytest_outcomes --outcomes "$outdir/env_and_tests.log" \
    "${parallel[@]}" tests/ -k "$test_select" ${DEVICE_CHECK_TEST_ARGS:-}

# 4. Kernel benchmark.
run_stage "bench/kernels.py" $t_kbench "$outdir/kernels.log" \
  "$PY" bench/kernels.py "${kbench_extra[@]}"

csvs=(); for f in train.csv kernels.csv; do [ -f "bench/results/$f" ] && csvs+=("$f"); done
[ ${#csvs[@]} -gt 0 ] && tar -cf "$outdir/csv.tar" -C bench/results "${csvs[@]}"

{
  echo "================ device check summary ($(( $(date +%s) - start )) s) ================"
  head -n 4 "$outdir/env_and_tests.log"
  printf '%s\n' "${stage_status[@]}"
  echo "--- bench/train.py, one row per finished variant (details: train.log, train*.json, traces.tar, csv.tar) ---"
  "$PY" bench/gpu_plan.py --beside "$outdir/train.log" 2>/dev/null || grep -E "^row " "$outdir/train.log"
  grep -E "^profile |\] (FAILED|profiling FAILED)" "$outdir/train.log" | awk '!seen[$0]++'
  for recipe in seed airbench94-muon hiverge; do
    grep -q "^bench/train.py on .*recipe: $recipe," "$outdir/train.log" ||
      echo "(recipe $recipe: its stage ended before its final table; the rows above are what it finished)"
  done
  echo "--- kernel tests (CUDA), as recorded per test ---"
  for outcome in passed failed error skipped; do
    printf '%s %s  ' "$(grep -c "^test $outcome: " "$outdir/env_and_tests.log")" "$outcome"
  done; echo
  grep -E "^test (failed|error): " "$outdir/env_and_tests.log" | head -n 20
  grep -E "(passed|failed|error).* in [0-9.]+s" "$outdir/kernels.log" | tail -n 1
  echo "--- bench/kernels.py ---"
  sed -n '/^op /,$p' "$outdir/kernels.log" | head -n 40
} | tee "$outdir/summary.txt"
