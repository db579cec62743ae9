#!/bin/bash
# The GPU checks in one call on the lent GPU machine: device-side normalisation is bit-exact, training
# throughput (#5), embedding throughput (#7). Its python3 has torch, numpy, pandas, pyarrow, pillow, opencv,
# timm, regex, huggingface_hub and safetensors but no package index.
# Prepared here (both folders ignored by git, carried to the machine):
#   .whl/      open_clip_torch==3.3.0 webdataset==0.2.86 braceexpand ftfy wcwidth hydra-core==1.3.2
#              omegaconf==2.3.0 antlr4-python3-runtime==4.9.3, and siftbench's own wheel (pip wheel --no-deps .)
#   .gpudata/shards/   two or more tars of the world's pool/shards
# Then: bash scripts/gpu/device_checks.sh "$OUT"            (on the GPU; ~4 min; EMBED_ROUNDS=1 ~3 min)
#       TINY=1 bash scripts/gpu/device_checks.sh /tmp/dry    (CPU dry run of the same path)
set -uo pipefail
OUT_DIR=${1:?usage: device_checks.sh OUT_DIR}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
tiny=(); if [ -n "${TINY:-}" ]; then tiny=(--tiny); fi
work=$(mktemp -d)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, open_clip, webdataset; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
mkdir -p "$OUT_DIR"
# Shards and runs live outside OUT_DIR (only a few small files come back from the machine).
device=cuda; if [ -n "${TINY:-}" ]; then device=cpu; fi
"$PY" scripts/gpu/normalize_check.py --world-shards .gpudata/shards --out "$OUT_DIR" --device $device
timeout 270 "$PY" scripts/gpu/train_check.py --world-shards .gpudata/shards --out "$work/train" "${tiny[@]}" \
  2>&1 | tee "$OUT_DIR/train_check.log" | tail -25
cp "$work/train/train_check.json" "$OUT_DIR/" 2>/dev/null
tail -30 "$work"/train/run/*/out.log > "$OUT_DIR/open_clip_train.log" 2>/dev/null
timeout 240 "$PY" scripts/gpu/embed_check.py --world-shards .gpudata/shards --out "$work/embed" \
  --rounds "${EMBED_ROUNDS:-2}" "${tiny[@]}" 2>&1 | tee "$OUT_DIR/embed_check.log" | tail -25
cp "$work/embed/embed_check.json" "$OUT_DIR/" 2>/dev/null
ls "$OUT_DIR"
