#!/usr/bin/env bash
# The GPU check: everything only a GPU can show, in one short script.
#
#   bench/device_check.sh [--quick] [--runs N] [--label TEXT] DATA.npz [OUTDIR]
#
# On a fresh H100/H200 machine with the project at its root and nothing
# installed (python3 with torch, triton, numpy, pytest): the environment, the
# kernel tests on CUDA, bench/kernels.py, bench/train.py (N runs of each
# variant on DATA), logs and JSON into OUTDIR (default: $OUT when set, else
# out/device_check), then a short summary printed last. Full: under 8 minutes
# with 5 runs (stage limits 120 + 300 + 90 s); --quick (2 runs of eager and
# compile+triton, fewer kernel tests and ops): under 3 minutes (50 + 110 + 50 s).
# Every stage has its own time limit; one failing stage does not stop the rest.
# DEVICE_CHECK_TRAIN_ARGS (extra bench/train.py arguments) and DEVICE_CHECK_TEST_ARGS
# (extra pytest arguments) let a CPU dry run exercise the plumbing with tiny sizes.
set -u
cd "$(dirname "$0")/.."

quick=0; runs=""; label=""; data=""; outdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs="$2"; shift ;;
    --label) label="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) if [ -z "$data" ]; then data="$1"; elif [ -z "$outdir" ]; then outdir="$1"; else
         echo "device_check.sh: unexpected argument $1" >&2; exit 2; fi ;;
  esac
  shift
done
if [ -z "$data" ] || [ ! -f "$data" ]; then
  echo "device_check.sh: give an existing DATA.npz (e.g. python3 ../shared/cifar10-jpeg/unpack.py /tmp/cifar10.npz)" >&2
  exit 2
fi
outdir="${outdir:-${OUT:-out/device_check}}"
mkdir -p "$outdir"
label="${label:-$(basename "$data")}"
if [ "$quick" = 1 ]; then   # the headline pair only, fewer kernel tests and ops
  runs="${runs:-2}"; t_tests=50; t_kbench=50; t_train=110
  test_select="(kernels and not bfloat16) or (integration and not compile)"
  train_extra=(--variants eager,compile+triton); kbench_extra=(--only affine_gelu,squeeze_excite)
else
  runs="${runs:-5}"; t_tests=120; t_kbench=90; t_train=300
  test_select="kernels or (integration and not compile)"; train_extra=(); kbench_extra=()
fi
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
export PYTHONUNBUFFERED=1
PY=python3
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
  $PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
  git rev-parse HEAD 2>/dev/null || echo "no git"
} > "$outdir/env_and_tests.log" 2>&1

# 2. Kernel tests on CUDA (the same tests CI runs in the interpreter).
run_stage "kernel tests (CUDA)" $t_tests "$outdir/env_and_tests.log" \
  $PY -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/ -k "$test_select" ${DEVICE_CHECK_TEST_ARGS:-}

# 3. Whole-run benchmark: the headline.
run_stage "bench/train.py" $t_train "$outdir/train.log" \
  $PY bench/train.py --data "$data" --data-label "$label" --runs "$runs" --json "$outdir/train.json" \
    "${train_extra[@]}" ${DEVICE_CHECK_TRAIN_ARGS:-}

# 4. Kernel benchmark.
run_stage "bench/kernels.py" $t_kbench "$outdir/kernels.log" \
  $PY bench/kernels.py "${kbench_extra[@]}"

cp bench/results/train.csv bench/results/kernels.csv "$outdir/" 2>/dev/null

{
  echo "================ device check summary ($(( $(date +%s) - start )) s) ================"
  head -n 4 "$outdir/env_and_tests.log"
  printf '%s\n' "${stage_status[@]}"
  grep -E "passed|failed|error" "$outdir/env_and_tests.log" | tail -n 2
  echo "--- bench/kernels.py ---"
  sed -n '/^op /,$p' "$outdir/kernels.log" | head -n 40
  echo "--- bench/train.py ---"
  sed -n '/^bench\/train.py on/,/^wrote/p' "$outdir/train.log"
} | tee "$outdir/summary.txt"
