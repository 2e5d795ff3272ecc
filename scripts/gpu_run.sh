#!/usr/bin/env bash
# Everything the course claims about a GPU, in one script:
#
#   env       nvidia-smi and `labkit doctor`
#   tests     pytest -m gpu: correctness sweeps, CUDA-graph capture, the stateful cache test
#   bench     labkit bench: every notebook's section, records in data/results/
#   nbval     every master notebook through nbval in gpu mode, one at a time
#   sanitize  compute-sanitizer (memcheck, racecheck) on the Numba and Triton kernels
#   students  the master solutions of 02/03's kernel exercises timed (student_kernels_<gpu>.json)
#   grade     labkit grade over every master (full points) and its release ("not started")
#   quant     issue #23 in one stage: the quantized kernel's plans and loops beside the fp16 kernel
#             (quant-plan_<gpu>.json; GQA 4 in quant-plan-gqa4_<gpu>.json), SDPA beside both (quant_<gpu>.json), and batch 1, 8k tokens
#             split into the kernel, its merge and a loads-only kernel (quant-b1-parts_<gpu>.json)
#   train     retrain the tiny models (not in the default run)
#
#   scripts/gpu_run.sh [STAGE ...]      (default: env tests bench nbval sanitize)
#   BENCH_ARGS (e.g. "--quick"), PYTEST_ARGS (e.g. "-x"), NBVAL_NOTEBOOKS="solutions/00_setup.ipynb ..."
#
# Results (JSON, plots) go to data/results/ and are packed with one log per stage into
# $OUT/results.tgz (default ./out). On a machine with no package registry, first fetch the
# Jupyter, hypothesis and tqdm wheels with scripts/fetch_device_wheels.sh and bring .whl/ along.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import nbval, hypothesis, tqdm" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 LABKIT_MODE=gpu
STAGES=("$@")
# sanitize last: a sanitizer run before a timing once slowed the timed kernels
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests bench nbval sanitize)
PYTEST=(python3 -m pytest -p no:cacheprovider -o addopts="" -q -rs)
status=0

run() {  # run NAME CMD...: log to NAME.log, remember failures, pack after every stage
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" > >(tee "$LOGS/$name.log") 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
  mkdir -p data/results/.logs && cp "$LOGS"/* data/results/.logs/ 2>/dev/null
  tar czf "$OUT/results.tgz" data/results 2>/dev/null
  rm -rf data/results/.logs
}

for stage in "${STAGES[@]}"; do
  case $stage in
    env) run env bash -c 'nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv;
           python3 -m labkit doctor' ;;
    tests) run tests "${PYTEST[@]}" -m gpu tests/gpu --ignore=tests/gpu/test_gpu_sanitizer.py ${PYTEST_ARGS:-} ;;
    bench) run bench python3 -m labkit bench ${BENCH_ARGS:-} ;;
    nbval)
      for nb in ${NBVAL_NOTEBOOKS:-solutions/*.ipynb}; do
        run "nbval_$(basename "$nb" .ipynb)" "${PYTEST[@]}" "$nb" --nbval-lax --nbval-current-env \
          --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900
      done ;;
    sanitize) run sanitize "${PYTEST[@]}" -m gpu tests/gpu/test_gpu_sanitizer.py ${PYTEST_ARGS:-} ;;
    students) run students python3 scripts/gpu/student_kernels.py --out data/results ;;
    grade) run grade python3 scripts/gpu/grade.py --out "$OUT" ${GRADE_ARGS:-} ;;
    quant) run quant_plan python3 scripts/gpu/quant_plan.py --out data/results --labels plan 4-warp "1-warp pps=8" \
             "heads on N pps=5" "heads on N pps=6" \
             "heads on N pps=7" "heads on N pps=8" "heads on N 4-stage pps=6" "heads on N 64-token pps=4" "heads on N 16-token pps=12"
           run quant_plan_gqa python3 scripts/gpu/quant_plan.py --hkv 8 --out data/results \
             --labels plan 4-warp "heads on N pps=7" "heads on N pps=8" "heads on N 64-token pps=4"
           run quant_bench python3 -m labkit.bench.quant --quick --out data/results
           run quant_parts python3 scripts/gpu/quant_b1_parts.py --out data/results ;;
    train) run train bash scripts/gpu/train_models.sh data/models ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
exit $status
