#!/usr/bin/env bash
# The paper's scale on the icon grid, on one GPU, in at most 10 minutes: the drawings at 256 px,
# the gpu256 preset (32x32 = 1024 codes, K = 8192, 256 text positions, the paper's masks, bf16)
# trained for a fixed number of steps per stage, the judge, and the icons benchmark on held-out
# cells. Prints one table (each stage's time, images/s, tokens/s, peak memory; the benchmark)
# and saves the sample grids in OUT/grids.
#
#   bash bench/gpu_icons.sh [OUT]          (default runs/gpu_icons)
#   TINY=1 bash bench/gpu_icons.sh OUT     the same steps at tiny sizes on the CPU (a test runs it)
#
# ICONS_CACHE: a folder holding the @iconify/json tarball (default: fetched with npm). A GPU
# machine that reaches no registry needs it brought along (the withicons-*.json files alone,
# as package/json/*.json in iconify-json-2.2.553.tgz, are 25 MB) and resvg-py's wheel
# (PIP_FIND_LINKS=DIR PIP_NO_INDEX=1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_icons}
PY=${PYTHON:-.venv/bin/python}
if [[ "${TINY:-0}" == 1 ]]; then
  SIZE=32 TEST_SIZE=24 PRESET=tiny VOCAB=300 CELLS=5 JUDGE_STEPS=20 OBJECTS=5
  STEPS=(vqvae.train.max_steps=4 clip.train.max_steps=4 dalle.train.max_steps=4
         vqvae.model.image_size=32 clip.model.image_size=32)
else
  SIZE=256 TEST_SIZE=192 PRESET=gpu256 VOCAB=1000 CELLS=64 JUDGE_STEPS=4000 OBJECTS=0
  STEPS=(vqvae.train.max_steps=1000 vqvae.train.eval_every=250 vqvae.train.checkpoint_every=500
         clip.train.max_steps=600 clip.train.eval_every=200 clip.train.checkpoint_every=600
         clip.optim.warmup_steps=100 clip.model.text_length=32
         dalle.train.max_steps=600 dalle.train.eval_every=200 dalle.train.checkpoint_every=600
         dalle.optim.warmup_steps=100 dalle.optim.lr=0.001 dalle.data.bpe_dropout=0
         dalle.data.caption_drop=0 vqvae.optim.warmup_steps=100)
fi
CACHE=()
[[ -n "${ICONS_CACHE:-}" ]] && CACHE=("cache=$ICONS_CACHE")
mkdir -p "$OUT"
START=$(date +%s)
"$PY" train.py icons --out "$OUT/data" --size "$SIZE" --objects "$OBJECTS" "test_size=$TEST_SIZE" \
  "workers=$(nproc)" "${CACHE[@]}"
echo "data: $(( $(date +%s) - START )) s" | tee "$OUT/data_seconds.txt"
"$PY" train.py icons-judge --data "$OUT/data" --steps "$JUDGE_STEPS" --size 64
"$PY" train.py all --data "$OUT/data/split_0/train" --eval-data "$OUT/data/split_0/heldout" \
  --out "$OUT/run" --preset "$PRESET" --text-vocab "$VOCAB" "${STEPS[@]}"
"$PY" -m dalle1 eval-icons --run "$OUT/run/dalle" --data "$OUT/data/split_0" --n "$CELLS" \
  --candidates 16 --json "$OUT/eval.json" --save "$OUT/grids" > "$OUT/eval.txt"
"$PY" bench/gpu_icons_table.py "$OUT"
