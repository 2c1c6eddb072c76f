#!/usr/bin/env bash
# The pipeline on real images: Tux Paint's stamps (Debian's tuxpaint-stamps-default), installed
# when missing; `train.py all --preset cpu64` on them, then the held-out report
# (bench/real_images.py). About 11 minutes on 2 CPU cores. Extra arguments go to train.py all.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/tuxpaint/stamps ]; then
  apt-get update -qq && apt-get install -y -qq tuxpaint-stamps-default >/dev/null
fi
make .venv/.installed >/dev/null
.venv/bin/python bench/real_images.py "$@"
