#!/usr/bin/env bash
# Everything the course claims about a GPU, in one script: environment and doctor, correctness
# sweeps, benchmarks, nbval of the notebooks in gpu mode, compute-sanitizer on the Numba and Triton kernels.
#
#   scripts/gpu_run.sh [STAGE ...]      (default: all stages)
#   stages: env bench nbval numba sanitize sanitize_triton triton variants floor rope paged stateful train speculative serving
#   NUMBA_ARGS, TRITON_ARGS, FLOOR_ARGS, ROPE_ARGS, PAGED_ARGS, SPECULATIVE_ARGS, SERVING_ARGS (e.g. "--quick")
#   pass options to one stage's script.
#   NBVAL_NOTEBOOKS="solutions/00_setup.ipynb ..." limits the nbval stage to some notebooks.
#
# Results (JSON) go to data/results/ and are packed with the logs into $OUT (default ./out):
# results.tgz (data/results with a .logs/ folder of one log per stage, and data/models). On a machine with no package
# registry, first fetch the Jupyter/nbval wheels here with scripts/fetch_device_wheels.sh and
# bring .whl/ along.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
LOGS=$(mktemp -d)  # one log per stage, packed into results.tgz ($OUT returns only a few files)
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import nbval" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 LABKIT_MODE=gpu
STAGES=("$@")
# sanitize last: whatever a sanitizer run compiles goes to its own Triton cache (SANITIZE_CACHE), never the timed one
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env bench numba triton floor rope paged stateful speculative serving nbval sanitize)
status=0

run() {  # run NAME CMD...: log to $OUT/NAME.log, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" > >(tee "$LOGS/$name.log") 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
  pack  # after every stage: a run cut short by a time limit still returns what it finished
}

pack() {
  mkdir -p data/results/.logs && cp "$LOGS"/* data/results/.logs/ 2>/dev/null
  tar czf "$OUT/results.tgz" data/results $( [ -d data/models ] && echo data/models ) 2>/dev/null
  rm -rf data/results/.logs
}

SANITIZE_CACHE=$(mktemp -d)
sanitize_triton() {  # memcheck of the Triton kernels, compiled into their own cache: never one a timing reuses
  TRITON_CACHE_DIR=$SANITIZE_CACHE run sanitize_triton compute-sanitizer --tool memcheck --report-api-errors no \
    --error-exitcode 3 python3 scripts/gpu/sanitize_triton.py
}
for stage in "${STAGES[@]}"; do
  case $stage in
    env)
      run env bash -c 'nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv;
        python3 -m labkit doctor' ;;
    bench) run bench python3 -m labkit bench ;;
    nbval)  # one notebook at a time: each gets its own log, packed as soon as it finishes
      for nb in ${NBVAL_NOTEBOOKS:-solutions/*.ipynb}; do
        run "nbval_$(basename "$nb" .ipynb)" python3 -m pytest -p no:cacheprovider "$nb" --nbval-lax --nbval-current-env \
          --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 -q -o addopts=""
      done ;;
    sanitize_triton) sanitize_triton ;;
    sanitize)
      if [ -f scripts/gpu/sanitize_numba.py ]; then
        run sanitize_memcheck compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 3 python3 scripts/gpu/sanitize_numba.py
        run sanitize_racecheck compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/gpu/sanitize_numba.py
      fi
      sanitize_triton ;;
    train) [ -f scripts/gpu/train_models.sh ] && run train bash scripts/gpu/train_models.sh data/models ;;
    numba)       [ -f scripts/gpu/numba_attention.py ] && run numba python3 scripts/gpu/numba_attention.py --out data/results ${NUMBA_ARGS:-} ;;
    triton)      [ -f scripts/gpu/triton_attention.py ] && run triton python3 scripts/gpu/triton_attention.py --out data/results ${TRITON_ARGS:-} ;;
    variants)    run variants python3 scripts/gpu/triton_variants.py --out data/results/reverted ${VARIANTS_ARGS:-} ;;
    floor)       run floor python3 scripts/gpu/decode_floor.py --out data/results ${FLOOR_ARGS:-} ;;
    rope)        [ -f scripts/gpu/rope.py ] && run rope python3 scripts/gpu/rope.py --out data/results ${ROPE_ARGS:-} ;;
    paged)       [ -f scripts/gpu/paged.py ] && run paged python3 scripts/gpu/paged.py --out data/results ${PAGED_ARGS:-} ;;
    stateful)  # the paged cache's hypothesis state machine, its writes and paged attention on the GPU
      run stateful python3 -m pytest -p no:cacheprovider -o addopts="" -q tests/test_kvcache.py -k PagedCache ;;
    speculative) [ -f scripts/gpu/speculative.py ] && run speculative python3 scripts/gpu/speculative.py --out data/results ${SPECULATIVE_ARGS:-} ;;
    serving)     [ -f scripts/gpu/serving.py ] && run serving python3 scripts/gpu/serving.py --out data/results ${SERVING_ARGS:-} ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
pack
exit $status
