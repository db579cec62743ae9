"""World shards re-encoded as JPEG at the GPU checks' image size (shared by embed_check.py and train_check.py).

Each output shard holds ``per_shard`` samples (cycling through its source shard) as ``jpg`` + ``txt`` +
``json`` with a fresh uid, so the folder is both a training shard set and the ``shards/`` of a pool.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from multiprocessing import Pool
from pathlib import Path


def _resize_shard(job: tuple[Path, Path, int, int, int]) -> int:
    """Copy ``count`` samples (cycling) of a world shard to ``dest`` as ``size`` px JPEG + caption + fresh uid."""
    from PIL import Image

    from siftbench.benchmark.core.tars import iter_tar_samples

    source, dest, size, count, shard = job
    samples = [(s[e], s["txt"]) for _, s in iter_tar_samples(source)
               for e in ("png", "jpg", "webp") if e in s and "txt" in s]
    with tarfile.open(dest, "w") as tar:
        for i in range(count):
            image, caption = samples[i % len(samples)]
            with Image.open(io.BytesIO(image)) as img:
                buffer = io.BytesIO()
                img.convert("RGB").resize((size, size), Image.BICUBIC).save(buffer, "JPEG", quality=95)
            key = f"{shard:05d}{i:05d}"
            uid = f"{shard * 100_000 + i + 1:032x}"
            for ext, data in (("jpg", buffer.getvalue()), ("txt", caption),
                              ("json", json.dumps({"uid": uid, "key": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return count


def write_jpeg_shards(world_shards: Path, dest: Path, n_shards: int, per_shard: int, size: int) -> int:
    """``n_shards`` tars ``dest/00000000.tar``... from the world's shards (in parallel); the samples written."""
    sources = sorted(world_shards.glob("*.tar"))
    if not sources:
        raise SystemExit(f"{world_shards}: no *.tar; pass the world's pool/shards folder (siftbench world prints it)")
    dest.mkdir(parents=True, exist_ok=True)
    jobs = [(sources[i % len(sources)], dest / f"{i:08d}.tar", size, per_shard, i) for i in range(n_shards)]
    with Pool(min(len(jobs), os.cpu_count() or 1)) as workers:
        return sum(workers.map(_resize_shard, jobs))


def default_world_shards() -> Path | None:
    """The most recently generated world's pool shards in the siftbench cache, if any."""
    root = Path(os.environ.get("SIFTBENCH_CACHE", Path.home() / ".cache" / "siftbench")) / "worlds"
    found = sorted(root.glob("*/pool/shards"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
