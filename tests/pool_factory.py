"""A tiny DataComp-layout pool written on the fly, for tests that need real tars and metadata.

Images are 32x32 PNGs of a coloured shape on a dark background and the caption names both, so a toy
training run has something learnable; everything is seeded and byte-deterministic.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}
SHAPES = ("square", "circle", "triangle")


# A world smaller than toy (300 pairs, every defect planted), for tests that generate one or several.
MINI_WORLD = {
    "pool_size": 300,
    "reference_size": 40,
    "samples_per_shard": 100,
    "eval": {"per_class": 1, "tail_per_class": 1, "retrieval_images": 20},
}

def make_tiny_pool(root: str | Path, n_shards: int = 2, per_shard: int = 16, seed: int = 0) -> list[str]:
    """Write ``root/metadata/{i:08d}.parquet`` and ``root/shards/{i:08d}.tar``; return the uids in pool order.

    Metadata columns: uid, text, original_width, original_height, sha256 (of the image bytes). Tar
    members per sample: ``{key}.png``, ``{key}.txt``, ``{key}.json`` (uid, key, caption), with
    img2dataset-style keys (shard * 10**4 + index, 8 digits).
    """
    import pandas as pd
    from PIL import Image, ImageDraw

    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    all_uids: list[str] = []
    for s in range(n_shards):
        rows = []
        with tarfile.open(root / "shards" / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(per_shard):
                uid = rng.bytes(16).hex()
                colour = colours[int(rng.integers(len(colours)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                image = Image.new("RGB", (32, 32), (20, 20, 20))
                draw = ImageDraw.Draw(image)
                x, y = (int(v) for v in rng.integers(2, 14, size=2))
                box = (x, y, x + 16, y + 16)
                if shape == "square":
                    draw.rectangle(box, fill=COLOURS[colour])
                elif shape == "circle":
                    draw.ellipse(box, fill=COLOURS[colour])
                else:
                    draw.polygon([(x, y + 16), (x + 16, y + 16), (x + 8, y)], fill=COLOURS[colour])
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                png = buf.getvalue()
                text = f"a {colour} {shape}"
                key = f"{s * 10_000 + j:08d}"
                meta = json.dumps({"uid": uid, "key": key, "caption": text}).encode()
                for ext, data in (("png", png), ("txt", text.encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                rows.append({"uid": uid, "text": text, "original_width": 32, "original_height": 32,
                             "sha256": hashlib.sha256(png).hexdigest()})
                all_uids.append(uid)
        pd.DataFrame(rows).to_parquet(root / "metadata" / f"{s:08d}.parquet", index=False)
    return all_uids
