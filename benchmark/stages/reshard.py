"""reshard: pool tars + subset -> training shards, with repeats honoured and spread apart.

Three steps; the slow ones are parallel and resumable:

1. **index** (parallel over pool tars): read each tar's headers and ``.json`` members only (image bytes
   are skipped by seeking), keep the samples whose uid is in the subset: where their image and caption
   bytes sit in the tar. A damaged tar is read on from its next valid header (core.tars); the tars and
   members it lost are counted and named on stderr. One ``.reshard/index/{i}.npz`` per pool tar, written
   atomically (its existence is the completion marker).
2. **plan** (one process, seconds even for millions of rows): first pool occurrence of each subset uid,
   one slot per requested copy, copies of a uid spread evenly over the whole stream, then cut into shards.
3. **write** (parallel over output shards): copy the bytes into ``out_dir/{i:05d}.tar`` (``{key}.{img}``,
   ``.txt``, ``.json`` with uid and copy number; key ``{uid}_{copy}``, so keys stay unique when a uid
   repeats). Tar headers carry fixed mtime/uid/gid, so the same inputs and seed give byte-identical shards
   whatever the number of workers. A ``.reshard/done/{i}.json`` marker, written after the shard, makes a
   rerun skip it.

Pool tars must be plain (uncompressed) tars, as DataComp's download and the embedded world write them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError, StageError, SubsetError
from siftbench.benchmark.core.executors import Executor, LocalExecutor
from siftbench.benchmark.core.stage import fingerprint, stage_folder
from siftbench.benchmark.core.tars import IMAGE_EXTENSIONS, TarDamage, tar_members
from siftbench.benchmark.core.uids import UID_DTYPE, sort_uids, uid_to_words, validate_subset

FORMAT_VERSION = 1  # of manifest.json
STAGE_VERSION = 1  # bump whenever the shards change for the same inputs
WORK_DIR = ".reshard"

# One row per subset sample found in a pool tar: uid words, where its image and caption bytes are.
ENTRY_DTYPE = np.dtype([
    ("f0", "<u8"), ("f1", "<u8"), ("src", "<i4"), ("ext", "u1"),
    ("img_off", "<i8"), ("img_size", "<i8"), ("txt_off", "<i8"), ("txt_size", "<i8"),
])
# One row per output sample: an entry plus which copy of its uid this is.
SLOT_DTYPE = np.dtype([*ENTRY_DTYPE.descr, ("copy", "<u4")])

_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")


def reshard(
    pool_root: Path,
    subset: np.ndarray,
    out_dir: Path,
    seed: int,
    samples_per_shard: int = 1000,
    min_shards: int = 2,
    workers: int = 1,
    progress: bool = True,
    verify_images: bool = True,
    executor: Executor | None = None,
    on_change: Literal["refuse", "restart"] = "refuse",
) -> dict[str, Any]:
    """Write training shards for ``subset`` (u8,u8 uids; a uid repeated k times is trained on k times).

    ``min_shards``: pass at least ``loader workers x processes`` of the training run, because
    webdataset 0.2.86 raises when a run has fewer shards than loader workers. ``verify_images`` decodes
    each image header once so a damaged image is counted here instead of vanishing during training.
    ``executor`` (default: local processes, ``workers`` of them) runs the index and write tasks.
    A folder holding another reshard's shards is refused; with ``on_change="restart"``, for caches the
    caller owns, it is emptied and written anew.
    Returns the stats, also written to ``out_dir/stats.json``; ``out_dir/manifest.json`` lists the shards.
    """
    executor = executor or LocalExecutor(workers=workers, progress=progress)
    started = time.perf_counter()
    pool_root, out_dir = Path(pool_root), Path(out_dir)
    if samples_per_shard < 1 or min_shards < 1:
        raise StageError(f"reshard: samples_per_shard ({samples_per_shard}) and min_shards ({min_shards}) must be >= 1")
    subset = np.asarray(subset)
    # Order is not part of what reshard needs, so an unsorted array is sorted rather than refused.
    subset = validate_subset(sort_uids(subset) if subset.dtype == UID_DTYPE else subset, where="reshard subset")
    tars = _pool_tars(pool_root)
    subset_sha = _subset_sha256(subset)
    work = out_dir / WORK_DIR
    inputs = {
        "subset_sha256": subset_sha, "seed": int(seed), "samples_per_shard": int(samples_per_shard),
        "min_shards": int(min_shards), "verify_images": bool(verify_images),
        "pool_tars": [[p.name, p.stat().st_size] for p in tars],
    }
    with stage_folder(out_dir, fingerprint("reshard", STAGE_VERSION, inputs), on_change=on_change, what="shards",
                      outputs=("*.tar", "manifest.json", "stats.json", WORK_DIR), check_unclaimed=_no_foreign_tars):
        wanted, counts = _unique_counts(subset)
        wanted_path = work / "wanted.npy"
        if not wanted_path.exists():
            with atomic_path(wanted_path) as tmp, open(tmp, "wb") as f:
                np.save(f, wanted, allow_pickle=False)

        # 1. index, one task per pool tar
        clock = time.perf_counter()
        index_files = [work / "index" / f"{i:08d}.npz" for i in range(len(tars))]
        todo = [(str(t), i, str(wanted_path), str(index_files[i])) for i, t in enumerate(tars) if not index_files[i].exists()]
        executor.map(_index_tar, todo, desc="reshard: index pool tars")
        entries, scan = _load_index(index_files)
        index_s = time.perf_counter() - clock

        # 2. plan
        clock = time.perf_counter()
        slots, plan_stats = _plan(entries, wanted, counts, seed)
        if len(slots) == 0:
            raise SubsetError(
                f"reshard: none of the {len(wanted):,} subset uids occur in pool {pool_root} "
                f"({scan['samples']:,} samples in {len(tars)} tars); is the subset from another pool?"
            )
        n_shards = max(min_shards, -(-len(slots) // samples_per_shard))
        width = max(5, len(str(n_shards - 1)))
        bounds = [(s * len(slots)) // n_shards for s in range(n_shards + 1)]
        names = [f"{s:0{width}d}.tar" for s in range(n_shards)]
        plan_s = time.perf_counter() - clock

        # 3. write, one task per output shard
        clock = time.perf_counter()
        sources = [str(t) for t in tars]
        markers = [work / "done" / f"{s:0{width}d}.json" for s in range(n_shards)]
        todo = [(sources, slots[bounds[s]:bounds[s + 1]], str(out_dir / names[s]), str(markers[s]), verify_images)
                for s in range(n_shards) if not (markers[s].exists() and (out_dir / names[s]).exists())]
        executor.map(_write_shard, todo, desc="reshard: write shards")
        done = [json.loads(m.read_text()) for m in markers]
        write_s = time.perf_counter() - clock

        damaged = {tuple(u) for d in done for u in d["damaged_uids"]}
        written = sum(d["written"] for d in done)
        unique_written = plan_stats["found_unique"] - len(damaged)
        stats = {
            "subset_rows": len(subset),
            "subset_unique": len(wanted),
            "subset_sha256": subset_sha,
            "found_unique": plan_stats["found_unique"],
            "missing_from_pool": plan_stats["missing_unique"],
            "missing_copies": plan_stats["missing_copies"],
            "num_samples": written,
            "num_unique": unique_written,
            "num_shards": n_shards,
            "samples_per_shard": samples_per_shard,
            "pool_tars": len(tars),
            "pool_samples_scanned": scan["samples"],
            "damaged_tars": scan["damaged_tars"],
            "damaged_members": scan["damaged_members"],
            "samples_without_uid": scan["no_uid"],
            "incomplete_samples": scan["incomplete"],
            "duplicate_pool_uids": plan_stats["duplicate_pool_uids"],
            "damaged_images": len(damaged),
            "damaged_image_copies": sum(d["damaged"] for d in done),
            "max_copies": plan_stats["max_copies"],
            "max_copies_in_one_shard": _max_copies_per_shard(slots, bounds),
            "min_copy_gap": plan_stats["min_copy_gap"],
            "seed": int(seed),
            "workers": int(workers),
            "wall_s": {"index": round(index_s, 3), "plan": round(plan_s, 3), "write": round(write_s, 3),
                       "total": round(time.perf_counter() - started, 3)},
        }
        write_json(out_dir / "manifest.json", {
            "format_version": FORMAT_VERSION,
            "num_samples": written,
            "num_unique": unique_written,
            "num_shards": n_shards,
            "shards": names,
            "pattern": f"{{{names[0][:-4]}..{names[-1][:-4]}}}.tar",
            "subset_sha256": subset_sha,
            "seed": int(seed),
        })
        write_json(out_dir / "stats.json", stats)
        return stats


def _pool_tars(pool_root: Path) -> list[Path]:
    folder = pool_root / "shards" if (pool_root / "shards").is_dir() else pool_root
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise PoolError(
            f"reshard: no pool tars in {folder}; a pool keeps its images in shards/{{i:08d}}.tar "
            "(webdataset: image, .txt, .json with uid), as DataComp's download and `siftbench world` write them"
        )
    return tars


def _subset_sha256(subset: np.ndarray) -> str:
    # The bytes write_subset would put on disk, so this equals file_sha256(subset.npy) for a saved subset.
    buf = io.BytesIO()
    np.save(buf, subset, allow_pickle=False)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _no_foreign_tars(out_dir: Path) -> None:
    if any(p.suffix == ".tar" for p in out_dir.iterdir()):
        raise StageError(f"{out_dir} already holds .tar files not written by reshard (no stage.json); "
                         "choose an empty folder")


def _unique_counts(subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique uids of a sorted subset (numeric order) and how many times each is requested."""
    if len(subset) == 0:
        return subset[:0].copy(), np.zeros(0, dtype=np.int64)
    new = np.ones(len(subset), dtype=bool)
    new[1:] = (subset["f0"][1:] != subset["f0"][:-1]) | (subset["f1"][1:] != subset["f1"][:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(subset)))
    return np.ascontiguousarray(subset[starts]), counts.astype(np.int64)


def _as_void(uids: np.ndarray) -> np.ndarray:
    """The two uid words of any record array as one 16-byte value each: exact set operations."""
    words = np.empty((len(uids), 2), dtype="<u8")
    words[:, 0], words[:, 1] = uids["f0"], uids["f1"]
    return words.view(np.dtype((np.void, 16))).ravel()


_WANTED_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def _wanted_sorted(path: str) -> np.ndarray:
    # Loaded once per worker process; sorted as bytes so searchsorted can test membership. Keyed by the
    # file's identity too: a restarted folder writes a new wanted.npy under the same name.
    stat = os.stat(path)
    key = (path, stat.st_ino, stat.st_mtime_ns)
    if key not in _WANTED_CACHE:
        _WANTED_CACHE.clear()
        _WANTED_CACHE[key] = np.sort(_as_void(np.load(path, allow_pickle=False)))
    return _WANTED_CACHE[key]


def _index_tar(task: tuple[str, int, str, str]) -> None:
    """Scan one pool tar; save the subset's samples (uid, byte ranges) and what was damaged or incomplete."""
    tar_path, src, wanted_path, out_path = task
    path = Path(tar_path)
    counts: Counter[str] = Counter()
    samples: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_COMPRESSED_MAGIC):
        raise PoolError(f"{path}: compressed tar; reshard reads plain tars by offset. Decompress it "
                        f"(e.g. `gunzip -c x.tar.gz > x.tar`) or re-download without compression")
    damage = TarDamage(path)
    members = tar_members(path, damage)  # read past damage, which is counted
    if members is None:
        raise PoolError(f"{path}: holds GNU sparse members; reshard reads plain tars by offset. Repack it "
                        "without --sparse")
    if damage:
        damage.warn()
        counts["damaged_tars"] += 1
        counts["damaged_members"] += damage.lost_members
    with open(path, "rb") as f:
        for name, offset, size in members:
            key, _, ext = name.rsplit("/", 1)[-1].partition(".")
            sample = samples.setdefault(key, {})
            ext = ext.lower()
            if ext == "json":
                sample["json"] = os.pread(f.fileno(), size, offset)
            else:
                sample[ext] = (offset, size)

    rows = []
    for sample in samples.values():
        counts["samples"] += 1
        uid = _uid_of(sample.get("json"))
        image = next(((i, sample[e]) for i, e in enumerate(IMAGE_EXTENSIONS) if e in sample), None)
        if uid is None:
            counts["no_uid"] += 1
        elif image is None or "txt" not in sample:
            counts["incomplete"] += 1
        else:
            ext_code, (img_off, img_size) = image
            rows.append((*uid, src, ext_code, img_off, img_size, *sample["txt"]))
    entries = np.array(rows, dtype=ENTRY_DTYPE)
    if len(entries):
        wanted = _wanted_sorted(wanted_path)
        keys = _as_void(entries)
        pos = np.minimum(np.searchsorted(wanted, keys), max(len(wanted) - 1, 0))
        entries = entries[wanted[pos] == keys] if len(wanted) else entries[:0]
    names = ("samples", "damaged_tars", "damaged_members", "no_uid", "incomplete")
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, entries=entries, counts=np.array([counts[n] for n in names], dtype=np.int64),
                 count_names=np.array(names))


def _uid_of(raw: bytes | None) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        uid = json.loads(raw).get("uid")
        return uid_to_words(str(uid)) if uid is not None and len(str(uid)) <= 32 else None
    except (ValueError, AttributeError, TypeError):
        return None


def _load_index(files: Sequence[Path]) -> tuple[np.ndarray, dict[str, int]]:
    parts, totals = [], Counter()
    for path in files:
        with np.load(path, allow_pickle=False) as z:
            parts.append(z["entries"])
            totals.update(dict(zip(z["count_names"].tolist(), z["counts"].tolist(), strict=True)))
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=ENTRY_DTYPE)
    return entries, {k: int(totals[k]) for k in ("samples", "damaged_tars", "damaged_members", "no_uid", "incomplete")}


def _plan(entries: np.ndarray, wanted: np.ndarray, counts: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """Order every requested copy of every found uid into one training stream.

    Copy j of a uid requested k times gets the position key (j + u) / k with one uniform offset u per
    uid, and the stream is sorted by key. So a uid's copies sit 1/k of the stream apart (about N/k
    samples), the farthest apart k copies can be, and cutting the stream into S equal contiguous shards
    puts them in different shards unless the uid is repeated about S times or more (equal shard sizes
    matter more: resampled training picks shards uniformly, so a small shard's samples would be seen more
    often). Uids without repeats are simply shuffled. The simpler
    "pass r holds every uid with count > r" scheme can put copies of a uid next to each other at a pass
    boundary, and a uid far more repeated than the rest fills the late passes almost alone (its copies
    then share batches); the shuffle buffer of open_clip's loader only mixes a few thousand samples.
    """
    # First occurrence in pool order wins when the pool holds a uid twice (deterministic, counted).
    keys = _as_void(entries)
    _, first = np.unique(keys, return_index=True)
    duplicates = len(entries) - len(first)
    pool = entries[np.sort(first)]
    pool_keys = _as_void(pool)
    order = np.argsort(pool_keys)
    want_keys = _as_void(wanted)
    pos = np.searchsorted(pool_keys[order], want_keys)
    pos = np.minimum(pos, max(len(pool) - 1, 0))
    found = (pool_keys[order][pos] == want_keys) if len(pool) else np.zeros(len(wanted), dtype=bool)
    found_entries = pool[order[pos[found]]]  # aligned with wanted[found], i.e. numeric uid order
    k = counts[found]

    rng = np.random.default_rng(seed)
    offsets = rng.random(len(found_entries))
    owner = np.repeat(np.arange(len(found_entries)), k)
    copy = np.arange(len(owner)) - np.repeat(np.cumsum(k) - k, k)
    key = (copy + offsets[owner]) / k[owner]
    stream = np.lexsort((copy, owner, key))

    slots = np.empty(len(stream), dtype=SLOT_DTYPE)
    for name in ENTRY_DTYPE.names:
        slots[name] = found_entries[name][owner[stream]]
    slots["copy"] = copy[stream]

    gaps = None
    if len(k) and k.max() > 1:
        position = np.empty(len(stream), dtype=np.int64)
        position[stream] = np.arange(len(stream))
        by_owner = position[np.lexsort((position, owner))]
        same = owner[np.lexsort((position, owner))]
        d = np.diff(by_owner)[same[1:] == same[:-1]]
        gaps = int(d.min()) if len(d) else None
    return slots, {
        "found_unique": int(found.sum()),
        "missing_unique": int((~found).sum()),
        "missing_copies": int(counts[~found].sum()),
        "duplicate_pool_uids": int(duplicates),
        "max_copies": int(k.max()) if len(k) else 0,
        "min_copy_gap": gaps,
    }


def _max_copies_per_shard(slots: np.ndarray, bounds: Sequence[int]) -> int:
    shard = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    rec = np.empty(len(slots), dtype=[("f0", "<u8"), ("f1", "<u8"), ("s", "<i8")])
    rec["f0"], rec["f1"], rec["s"] = slots["f0"], slots["f1"], shard
    _, n = np.unique(rec, return_counts=True)
    return int(n.max()) if len(n) else 0


def _write_shard(task: tuple[list[str], np.ndarray, str, str, bool]) -> None:
    """Copy one output shard's samples out of the pool tars; then drop its completion marker."""
    sources, slots, shard_path, marker_path, verify = task
    handles: dict[int, Any] = {}
    written = damaged = 0
    damaged_uids: set[tuple[int, int]] = set()
    try:
        with atomic_path(shard_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for slot in slots:
                src = int(slot["src"])
                if src not in handles:
                    handles[src] = open(sources[src], "rb")  # noqa: SIM115 (closed in finally)
                image = os.pread(handles[src].fileno(), int(slot["img_size"]), int(slot["img_off"]))
                text = os.pread(handles[src].fileno(), int(slot["txt_size"]), int(slot["txt_off"]))
                uid = f"{int(slot['f0']):016x}{int(slot['f1']):016x}"
                if verify and not _image_ok(image):
                    damaged += 1
                    damaged_uids.add((int(slot["f0"]), int(slot["f1"])))
                    continue
                key = f"{uid}_{int(slot['copy'])}"
                meta = json.dumps({"uid": uid, "copy": int(slot["copy"])}, sort_keys=True).encode()
                for ext, data in ((IMAGE_EXTENSIONS[int(slot["ext"])], image), ("txt", text), ("json", meta)):
                    _add(tar, f"{key}.{ext}", data)
                written += 1
    finally:
        for handle in handles.values():
            handle.close()
    write_json(marker_path, {"written": written, "damaged": damaged, "damaged_uids": sorted(damaged_uids)})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _image_ok(data: bytes) -> bool:
    from PIL import Image  # optional (siftbench[ml]); only image checks need it

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for bad bytes; any of them means "cannot train on this"
        return False
