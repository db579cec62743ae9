#!/bin/bash
# GPU embed check (scripts/gpu/embed_check.py), prepared for the lent GPU machine: Python 3.12 with its own
# torch, no package index. Carry a wheels/ folder (ignored by git) as for train_check.sh:
#   open_clip_torch==3.3.0 ftfy wcwidth regex huggingface_hub safetensors timm hydra-core omegaconf
#   antlr4-python3-runtime   (torch/torchvision/numpy/pillow/pandas/pyarrow: the machine's)
# e.g. here: pip download --only-binary :all: --python-version 3.12 --no-deps -d wheels <those specs>
# and the world's shards: SIFTBENCH_WORLD_SHARDS=<world>/pool/shards (a few tars are enough).
#   bash scripts/gpu/embed_check.sh --out "$OUT"          # on the GPU, < 4 min
#   bash scripts/gpu/embed_check.sh --tiny --out /tmp/e    # CPU dry run
set -euo pipefail
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
if ! "$PY" -c "import siftbench.benchmark, open_clip" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" open_clip_torch==3.3.0 hydra-core omegaconf
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
extra=()
if [ -n "${SIFTBENCH_WORLD_SHARDS:-}" ]; then extra=(--world-shards "$SIFTBENCH_WORLD_SHARDS"); fi
exec timeout 230 "$PY" scripts/gpu/embed_check.py "${extra[@]}" "$@"
