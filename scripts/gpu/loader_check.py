#!/usr/bin/env python
"""The training loader alone: samples/s that open_clip_train's webdataset loader delivers from world shards
re-encoded at 224 px JPEG, with open_clip's stock train transform (floats from the workers) and with the
launcher's uint8 split (stages/train/launcher.py), alternating over rounds in one process.

On the GPU machine this says how many loader workers the compute rate needs; on a CPU it measures what the
split saves per worker. No model runs.

    python scripts/gpu/loader_check.py --world-shards .gpudata/shards --out /tmp/loader --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from argparse import Namespace
from pathlib import Path

from world_jpeg import default_world_shards, write_jpeg_shards  # scripts/gpu/, beside this file


def samples_per_s(shards: Path, n_shards: int, transform, batch: int, workers: int, batches: int) -> float:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    args = Namespace(train_data=str(shards / f"{{00000000..{n_shards - 1:08d}}}.tar"), train_num_samples=batch * batches,
                     train_data_upsampling_factors=None, batch_size=batch, workers=workers, world_size=1, seed=0,
                     dataset_resampled=True, val_data=None, val_num_samples=None)
    loader = get_wds_dataset(args, transform, is_train=True, tokenizer=open_clip.get_tokenizer("ViT-B-32")).dataloader
    iterator = iter(loader)
    next(iterator)  # workers started and warm
    clock, seen = time.perf_counter(), 0
    for _ in range(batches - 1):
        images, _ = next(iterator)
        seen += len(images)
    return seen / (time.perf_counter() - clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-shards", type=Path, default=default_world_shards())
    parser.add_argument("--out", type=Path, default=Path("loader_check"))
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.world_shards is None:
        raise SystemExit("no world found; run `siftbench world` or pass --world-shards")

    import open_clip

    from siftbench.benchmark.stages.train.launcher import UInt8Normalize

    shards = args.out / "shards224"
    n_shards = max(args.workers, 2)
    write_jpeg_shards(args.world_shards, shards, n_shards, args.batch * 2, 224)
    stock = open_clip.image_transform(224, is_train=True)
    uint8, _ = UInt8Normalize.split(stock)
    rates: dict[str, list[float]] = {"stock": [], "uint8": []}
    for _ in range(args.rounds):
        for name, transform in (("stock", stock), ("uint8", uint8)):
            rates[name].append(round(samples_per_s(shards, n_shards, transform, args.batch, args.workers, args.batches), 1))
    result = {"workers": args.workers, "batch": args.batch, "batches": args.batches, "rounds": rates,
              "stock_samples_per_s": round(sum(rates["stock"]) / args.rounds, 1),
              "uint8_samples_per_s": round(sum(rates["uint8"]) / args.rounds, 1)}
    result["uint8_over_stock"] = round(result["uint8_samples_per_s"] / result["stock_samples_per_s"], 2)
    result["per_worker_uint8"] = round(result["uint8_samples_per_s"] / args.workers, 1)
    (args.out / "loader_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
