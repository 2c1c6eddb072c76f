#!/usr/bin/env bash
# One prepared GPU check, at most 10 minutes on one GPU: the gpu256 transformer's training on
# FlexAttention, the banded and the dense path (tokens/s, FLOP utilisation, memory), sampling
# 512 candidates with and without the compiled decode step, and the GPU paths against the CPU
# on a tiny model. Prints one table; writes OUT/gpu_check.json.
#
#   bash bench/gpu_check.sh [OUT]            (default runs/gpu_check)
#   TINY=1 bash bench/gpu_check.sh OUT       tiny sizes on the CPU (a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ARGS=(--out "${1:-runs/gpu_check}")
[[ "${TINY:-0}" == 1 ]] && ARGS+=(--tiny --device cpu)
timeout 600 "$PY" bench/gpu_check.py "${ARGS[@]}"
