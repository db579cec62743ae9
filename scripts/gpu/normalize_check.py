#!/usr/bin/env python
"""On the GPU: the pixels normalised on the device (embed stage, training launcher) are bit for bit what
open_clip's CPU preprocess gives, for world pictures at 224 px. Prints and writes normalize_check.json.

    python scripts/gpu/normalize_check.py --world-shards .gpudata/shards --out $OUT [--device cpu]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pictures", type=int, default=64)
    args = parser.parse_args()

    import open_clip
    import torch

    from siftbench.benchmark.core.tars import iter_tar_samples, sample_image
    from siftbench.benchmark.stages.embed import BatchPreprocess, _decode_rgb
    from siftbench.benchmark.stages.train.launcher import UInt8Normalize
    from siftbench.eval_suite.data import decode_image

    tar = sorted(args.world_shards.glob("*.tar"))[0]
    found = (sample_image(s) for _, s in iter_tar_samples(tar))
    raw = [image[1] for image in found if image is not None][: args.pictures]
    result = {"device": args.device, "pictures": len(raw)}
    for size in (32, 224):
        preprocess = open_clip.image_transform(size, is_train=False)
        want = torch.stack([preprocess(decode_image(b)) for b in raw])
        later = BatchPreprocess(preprocess, normalize_later=True)
        got = later.to_device(later.batch([later.image(_decode_rgb(b)) for b in raw]), args.device).cpu()
        result[f"embed_{size}px_equal"] = bool(torch.equal(got, want))
        train = open_clip.image_transform(size, is_train=True)
        uint8_train, normalize = UInt8Normalize.split(train)
        torch.manual_seed(0)
        want = torch.stack([train(decode_image(b)) for b in raw])
        torch.manual_seed(0)
        pixels = torch.stack([uint8_train(decode_image(b)) for b in raw]).to(args.device)
        result[f"train_{size}px_equal"] = bool(torch.equal(normalize(None, (pixels,))[0].cpu(), want))
        # What recomputing on the device would give (the reason for the table): CUDA's x / 255 is x * (1/255).
        arithmetic = (
            pixels.float().div(255).sub(torch.tensor(normalize.mean, device=args.device).view(-1, 1, 1))
        )
        arithmetic = arithmetic.div(torch.tensor(normalize.std, device=args.device).view(-1, 1, 1)).cpu()
        result[f"train_{size}px_arithmetic_equal"] = bool(torch.equal(arithmetic, want))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "normalize_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
