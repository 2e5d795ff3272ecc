#!/usr/bin/env bash
# Train the shipped model pair on a GPU: the 12-layer target, then the 1-layer draft distilled
# from it. About 4 minutes in all on an H100 (each run stops at its step or time budget).
#
#   bash scripts/gpu/train_models.sh [DIR]        (or --out DIR; default data/models)
#
# Writes DIR/target.safetensors and DIR/draft.safetensors (fp16, with config, vocab and the
# training record in their metadata). Extra arguments after DIR go to both training runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=data/models
if [ "${1:-}" = "--out" ]; then OUT=$2; shift 2; elif [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -m labkit.model.train --size target --out "$OUT" --steps 6000 --time-budget 150 "$@"
python3 -m labkit.model.train --size draft --out "$OUT" --teacher "$OUT/target.safetensors" \
  --steps 3000 --time-budget 60 "$@"
ls -l "$OUT"
