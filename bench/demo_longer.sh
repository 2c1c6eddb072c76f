#!/usr/bin/env bash
# The demo pipeline trained longer: CLIP 2,000 steps (demo: 500) and the transformer 3,000 steps
# of 32 (demo: 1,000), reusing the data, tokenizer, dVAE and token caches of `make demo`
# (runs/demo). Then the benchmark of every suite, reranked grids (best 8 of 32) for the demo's six
# sample captions and the reranking curve up to 512 candidates. About 30 minutes on a 2-core CPU.
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=runs/demo
$PY train.py clip --config configs/clip_shapes.yaml data.source=$D/data/train data.eval_source=$D/data/pair data.text_tokenizer=$D/tokenizer.model train.run_dir=runs/demo_longer/clip train.max_steps=2000
$PY train.py dalle --config configs/dalle_shapes.yaml data.source=$D/cache/train data.eval_source=$D/cache/eval data.image_tokenizer=$D/vqvae data.text_tokenizer=$D/tokenizer.model data.clip=runs/demo_longer/clip train.run_dir=runs/demo_longer/dalle train.batch_size=32 train.max_steps=3000
for s in single pair novel completion; do
  d=$s; [ $s = completion ] && d=pair
  $PY -m dalle1 eval --run runs/demo_longer/dalle --suite $s --data $D/data/$d --n 50 --candidates 16 --keep 4 --json runs/demo_longer/eval_$s.json
done
cut -d: -f2- $D/samples/captions.txt | sed 's/^ //' > runs/demo_longer/captions.txt
$PY -m dalle1 sample --run runs/demo_longer/dalle --captions-file runs/demo_longer/captions.txt -n 32 --keep 8 --out runs/demo_longer/samples/grid.png
$PY bench/rerank_curve.py --run runs/demo_longer/dalle --data $D/data --candidates 512 --out runs/demo_longer/rerank_curve.png --json runs/demo_longer/rerank_curve.json
