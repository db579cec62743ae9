#!/usr/bin/env python
"""GPU training check: ViT-B-32 with DataComp `small`'s hyperparameters (batch scaled to memory), trained by
open_clip_train from real world shards resized to 224 px JPEG, vs the same model on in-memory tensors.

Prints (and writes to --out) samples/s end to end from shards, samples/s compute-only on in-memory
tensors measured in the same run before and after, and their ratio (target >= 0.9: the loader keeps up).

    python scripts/gpu/train_check.py --world-shards ~/.cache/siftbench/worlds/<id>/pool/shards --out $OUT
    python scripts/gpu/train_check.py --tiny --out /tmp/check      # CPU dry run (tiny model, 3 steps)

Run by scripts/gpu/device_checks.sh. On one H100: ~90 s (shard writing ~3 s, compute-only 2 x 35 steps,
trainer start-up ~30 s, 35 trainer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from world_jpeg import default_world_shards, write_jpeg_shards  # scripts/gpu/, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-shards", type=Path, default=default_world_shards())
    parser.add_argument("--out", type=Path, default=Path("train_check"))
    parser.add_argument("--batch", type=int, default=1024, help="global batch (small's 4096 scaled to one GPU)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU dry run of the whole path: siftbench-tiny at 32 px (ViT-B-32 is minutes per step "
                             "on a busy 2-core CPU), batch 8, 3 steps, 1 worker, 2 shards of 224 px JPEG")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.steps, args.warmup_steps, args.workers = 8, 3, 1, 1
        args.shards, args.per_shard, args.device = 2, 64, "cpu"
    if args.world_shards is None:
        raise SystemExit("no world found; run `siftbench world` or pass --world-shards")

    from siftbench.benchmark.core.scales import load_scale
    from siftbench.benchmark.stages.train import benchmark_training_throughput

    clock = time.perf_counter()
    shards = args.out / "shards224"
    samples = write_jpeg_shards(args.world_shards, shards, args.shards, args.per_shard, 224)
    shard_s = time.perf_counter() - clock
    # small's model and optimiser; only the batch differs (to fit one GPU), so the run is marked non-comparable.
    scale = dict(load_scale("small"), global_batch=args.batch, workers=args.workers, comparable=False)
    if args.tiny:
        scale.update(model="siftbench-tiny", image_size=32, precision="fp32", grad_checkpointing=False)
    result = benchmark_training_throughput(shards, scale, out_dir=args.out / "run", device=args.device,
                                           steps=args.steps, warmup_steps=args.warmup_steps)
    result.update({"shards": args.shards, "samples_in_shards": samples, "shard_writing_s": round(shard_s, 1),
                   "source": str(args.world_shards), "wall_s": round(time.perf_counter() - clock, 1)})
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
        result["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    (args.out / "train_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
