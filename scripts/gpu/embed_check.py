#!/usr/bin/env python
"""GPU embed check: world shards resized to 224 px JPEG, embedded by `siftbench embed`'s stage with ViT-B-32
(random init unless cached weights are given), vs the same model on in-memory tensors in the same process.

Prints (and writes to --out) pairs/s through the whole stage (read tars, decode, preprocess in DataLoader
workers, model, write npz), pairs/s of the model alone on the pool's own batches held in memory (alternating
with the stage), and their ratio (target >= 0.8; ANCHORS: ViT-B-32 inference ~12.9k pairs/s on an H200).

    python scripts/gpu/embed_check.py --world-shards ~/.cache/siftbench/worlds/<id>/pool/shards --out $OUT
    python scripts/gpu/embed_check.py --tiny --out /tmp/embed-check     # CPU dry run

Run by scripts/gpu/device_checks.sh. On one H100: ~2 min (shard writing ~8 s, 2 rounds of ~26 s stage + ~23 s model).
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
    parser.add_argument("--out", type=Path, default=Path("embed_check"))
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", help="a cached tag or weights file (default: random init, same speed)")
    parser.add_argument("--size", type=int, default=224, help="image side of the resized shards")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--shards", type=int, help="DataLoader workers take whole shards, so a multiple of the "
                        "workers keeps all busy to the end (default: 2 per worker)")
    parser.add_argument("--per-shard", type=int, default=2048)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=2, help="stage and in-memory model alternate this many times")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU dry run of the whole path: siftbench-tiny, 2 shards of 128 pairs, 1 worker "
                             "(ViT-B-32 takes minutes on a busy 2-core CPU)")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.batch_size, args.workers, args.shards, args.per_shard, args.device = (
            "siftbench-tiny", 64, 1, 2, 128, "cpu")
    args.shards = args.shards or 2 * args.workers
    if args.world_shards is None:
        raise SystemExit("no world found; run `siftbench world` or pass --world-shards")

    from siftbench.benchmark.perf.embed_throughput import benchmark_embed_throughput

    clock = time.perf_counter()
    pool = args.out / f"pool{args.size}"
    pairs = write_jpeg_shards(args.world_shards, pool / "shards", args.shards, args.per_shard, args.size)
    shard_s = time.perf_counter() - clock
    result = benchmark_embed_throughput(pool, args.model, pretrained=args.pretrained, batch_size=args.batch_size,
                                        device=args.device, num_workers=args.workers, rounds=args.rounds)
    result.update({"image_size": args.size, "pairs_in_shards": pairs, "shard_writing_s": round(shard_s, 1),
                   "source": str(args.world_shards), "wall_s": round(time.perf_counter() - clock, 1),
                   "target_ratio": 0.8})
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
        result["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embed_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"embed stage {result['stage_pairs_per_s']:,.0f} pairs/s vs in-memory {result['in_memory_pairs_per_s']:,.0f} "
          f"pairs/s: ratio {result['ratio']:.2f} [target >= 0.8]")


if __name__ == "__main__":
    main()
