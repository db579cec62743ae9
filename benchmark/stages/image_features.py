"""Per-image features that need the image bytes: sha256 and perceptual hashes, computed once per pool.

Filters see metadata shards, never tars, so a dedup or decontamination filter cannot hash images
inside ``score``. This stage streams every ``shards/<name>.tar`` once and writes
``embeddings/imagehash/<name>.npz`` (atomically, one file per tar; an existing file is skipped, so a
rerun resumes; files that another version of the stage made, as its ``stage.json`` says, are all redone)
with, per sample:

    uid            structured u8,u8 (core.uids)
    sha256         (rows, 4) uint64, the digest's big-endian words
    phash, dhash   uint64, the same bits as ``imagehash.phash`` / ``imagehash.dhash`` (hash_size 8)
    phash_mirror, dhash_mirror   the hashes of the horizontally flipped image, so flips match too
    thumb          (rows, 192) uint8, an 8x8 RGB box-filtered thumbnail ("tiny image"): on small or
                   synthetic images grey-level hashes collide across different pictures, colour does not
    small          (rows, 768) uint8, a 16x16 RGB box-filtered image, for crop matching (perceptual_dedup)
    ok             uint8, 1 = decoded; 0 = damaged or missing image (its hashes are 0: never compare them)

Rows follow the tar. The pool reader joins them to the metadata by uid, whatever the metadata files are
called or how they are cut (core.pool), and exposes them as ``imagehash_sha256``, ``imagehash_phash``,
... (request them through a filter's ``embeddings()``). A metadata uid that no tar holds reads as
``ok = 0`` (all arrays 0); tar samples the metadata does not list are counted (``not_in_metadata``) and
never read. A damaged tar is read on from its next valid header and counted (``damaged_tars``).

Run it after the pool exists and before scoring any filter that asks for ``imagehash_*`` arrays.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from string import hexdigits
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.image_hashing import hash_image_bytes
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.stage import fingerprint, stage_folder
from siftbench.benchmark.core.tars import TarSamples, sample_image, sample_uid
from siftbench.benchmark.core.uids import hex_to_uids

_HEX = frozenset(hexdigits)
FEATURE_KEY = "imagehash"
STAGE_VERSION = 1  # bump whenever the arrays change for the same images (their files are then redone)
COUNTS = ("samples", "no_uid", "bad_uid", "no_image", "undecodable", "missing", "not_in_metadata", "damaged_tars",
          "damaged_members_lost", "skipped_existing")  # fmt: skip


def compute_image_features(pool_root: str | Path, executor: Any | None = None, progress: bool = False) -> dict[str, Any]:
    """Hash every image of the pool's tars into ``embeddings/imagehash/``; return counts per tar and in all.

    Resumable per tar. A damaged tar or undecodable image is counted (``damaged_tars``,
    ``undecodable``), never fatal; metadata rows that no tar holds are ``missing``, tar samples whose uid
    the metadata lacks ``not_in_metadata``.
    """
    root = Path(pool_root)
    tars = sorted((root / "shards").glob("*.tar"))
    if not tars:
        raise PoolError(f"pool {root}: no shards/*.tar to hash; image features need the pool's images")
    out_dir = root / "embeddings" / FEATURE_KEY
    executor = executor or LocalExecutor(progress=progress)
    with stage_folder(out_dir, fingerprint("image_features", STAGE_VERSION, {}), on_change="restart",
                      outputs=("*.npz", "stats.json"), what="image features"):
        per_tar = executor.map(partial(_hash_tar, root, out_dir), tars, desc="image features")
        totals: dict[str, Any] = dict.fromkeys(COUNTS, 0)
        for stats in per_tar:
            for key, value in stats.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        if any((root / "metadata").glob("*.parquet")):
            join = Pool.open(root).join(FEATURE_KEY).counts
            totals.update(missing=join["missing"], not_in_metadata=join["not_in_metadata"])
        summary = {"tars": len(tars), **totals, "per_tar": per_tar}
        write_json(out_dir / "stats.json", summary)
    return summary


def _hash_tar(root: Path, out_dir: Path, tar: Path) -> dict[str, Any]:
    target = out_dir / f"{tar.stem}.npz"
    if target.exists():
        return {"tar": tar.name, "skipped_existing": 1}
    uids: list[str] = []
    images: list[bytes] = []
    stats: dict[str, Any] = {"tar": tar.name, "samples": 0, "no_uid": 0, "bad_uid": 0, "no_image": 0,
                             "damaged_tars": 0}
    samples = TarSamples(tar)  # read past damage, with a warning on stderr
    for _, sample in samples:
        stats["samples"] += 1
        uid = sample_uid(sample)
        image = sample_image(sample)
        if not uid:
            stats["no_uid"] += 1
            continue
        if len(uid) > 32 or not _HEX.issuperset(uid):
            stats["bad_uid"] += 1
            continue
        if image is None:
            stats["no_image"] += 1
        uids.append(uid)
        images.append(image[1] if image else b"")
    if samples.damage:
        stats.update(damaged_tars=1, damaged_members_lost=samples.damage.lost_members,
                     damage=samples.damage.summary())
    parsed = hex_to_uids(uids)
    arrays = hash_image_bytes(images)
    stats["undecodable"] = int(((arrays["ok"] == 0) & np.array([bool(b) for b in images], dtype=bool)).sum())
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, uid=parsed, **arrays)
    return stats
