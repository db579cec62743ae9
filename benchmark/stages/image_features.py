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

The pool reader joins these on uid and exposes them as ``imagehash_sha256``, ``imagehash_phash``, ...
(request them through a filter's ``embeddings()``). It looks for ``<metadata shard>.npz``, so this
works where tar ``i`` and metadata shard ``i`` hold the same uids, as in the embedded world and in
img2dataset output. When a metadata shard of the same name exists, the file holds exactly its uids in
its order: a uid whose image is missing from the tar gets ``ok = 0``, and tar samples the metadata does
not list are counted and left out. (DataComp's released pool names its metadata files by hash, not by
shard; for it this stage would need a uid -> metadata-shard regrouping pass, not written yet.)

Run it after the pool exists and before scoring any filter that asks for ``imagehash_*`` arrays.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.image_hashing import hash_image_bytes
from siftbench.benchmark.core.stage import fingerprint, stage_folder
from siftbench.benchmark.core.tars import iter_tar_samples, sample_image, sample_uid
from siftbench.benchmark.core.uids import UID_DTYPE, hex_to_uids

FEATURE_KEY = "imagehash"
STAGE_VERSION = 1  # bump whenever the arrays change for the same images (their files are then redone)
COUNTS = ("samples", "no_uid", "no_image", "undecodable", "missing", "not_in_metadata", "damaged_tars",
          "skipped_existing")  # fmt: skip


def compute_image_features(pool_root: str | Path, executor: Any | None = None, progress: bool = False) -> dict[str, Any]:
    """Hash every image of the pool's tars into ``embeddings/imagehash/``; return counts per tar and in all.

    Resumable per tar. A damaged tar or undecodable image is counted (``damaged_tars``,
    ``undecodable``), never fatal; rows the metadata lists but the tar lacks are ``missing``.
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
        summary = {"tars": len(tars), **totals, "per_tar": per_tar}
        write_json(out_dir / "stats.json", summary)
    return summary


def _hash_tar(root: Path, out_dir: Path, tar: Path) -> dict[str, Any]:
    target = out_dir / f"{tar.stem}.npz"
    if target.exists():
        return {"tar": tar.name, "skipped_existing": 1}
    uids: list[str] = []
    images: list[bytes] = []
    stats: dict[str, Any] = {"tar": tar.name, "samples": 0, "no_uid": 0, "no_image": 0, "damaged_tars": 0}
    try:
        for _, sample in iter_tar_samples(tar):
            stats["samples"] += 1
            uid = sample_uid(sample)
            image = sample_image(sample)
            if uid is None:
                stats["no_uid"] += 1
                continue
            if image is None:
                stats["no_image"] += 1
            uids.append(uid)
            images.append(image[1] if image else b"")
    except PoolError as e:
        stats["damaged_tars"] = 1
        stats["damage"] = str(e)
    try:
        parsed = hex_to_uids(uids)
    except ValueError as e:
        raise PoolError(f"{tar}: {e}") from None
    arrays = hash_image_bytes(images)
    stats["undecodable"] = int(((arrays["ok"] == 0) & np.array([bool(b) for b in images], dtype=bool)).sum())
    metadata = root / "metadata" / f"{tar.stem}.parquet"
    if metadata.exists():
        wanted = hex_to_uids(pq.read_table(metadata, columns=["uid"]).column("uid"))
        parsed, arrays, stats["missing"], stats["not_in_metadata"] = _align_to(wanted, parsed, arrays)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, uid=parsed, **arrays)
    return stats


def _align_to(wanted: np.ndarray, have: np.ndarray, arrays: dict[str, np.ndarray]):
    """Rows for exactly ``wanted`` (the metadata's uids, in its order); uids without an image get ok = 0."""
    wv = np.ascontiguousarray(wanted).view(np.dtype((np.void, 16))).ravel()
    hv = np.ascontiguousarray(have).view(np.dtype((np.void, 16))).ravel()
    # The first occurrence of a uid in the tar wins (a duplicated member is not a second image).
    hv_unique, first = np.unique(hv, return_index=True)
    pos = np.minimum(np.searchsorted(hv_unique, wv), max(len(hv_unique) - 1, 0))
    found = (hv_unique[pos] == wv) if len(hv_unique) else np.zeros(len(wv), dtype=bool)
    src = first[pos]
    out: dict[str, np.ndarray] = {}
    for key, values in arrays.items():
        column = np.zeros((len(wanted), *values.shape[1:]), dtype=values.dtype)
        column[found] = values[src[found]]
        out[key] = column
    extra = int((~np.isin(hv_unique, wv)).sum()) if len(hv_unique) else 0
    return np.asarray(wanted, dtype=UID_DTYPE), out, int((~found).sum()), extra
