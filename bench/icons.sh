#!/usr/bin/env bash
# The icon grid on the CPU, as the README's figures were made: the drawings at 64 px (once), the
# judge (once), `train.py all --preset icons64` on one held-out choice, then the icons benchmark
# on every held-out cell and as many seen cells (16 candidates each).
#
#   bash bench/icons.sh [SPLIT_SEED] [OUT]     (default 0 and runs/icons$SPLIT_SEED)
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
OUT=${2:-runs/icons$SEED}
PY=${PYTHON:-.venv/bin/python}
DATA=data/icons
[[ -f $DATA/icons.json ]] || "$PY" train.py icons --out $DATA --size 64
[[ -f $DATA/judge/model.safetensors ]] || "$PY" train.py icons-judge --data $DATA
"$PY" train.py all --data $DATA/split_$SEED/train --eval-data $DATA/split_$SEED/heldout \
  --out "$OUT" --preset icons64 --text-vocab 1000
"$PY" -m dalle1 eval-icons --run "$OUT/dalle" --data $DATA/split_$SEED --candidates 16 \
  --json "$OUT/icons_eval.json" --save "$OUT/icons_grids" | tail -8
