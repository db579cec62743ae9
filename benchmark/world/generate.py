"""Generating a world into a folder, once, atomically; and finding it again in the cache.

The world is written into a temporary sibling folder and renamed into place at the end, so a world
folder that exists is complete (``world.json`` is its last file). Shards are independent jobs whose
output depends only on their rows, so running them in worker processes changes nothing on disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.progress import progress_bar
from siftbench.benchmark.core.versions import library_versions

from .config import DEFECTS, config_hash, resolve_config
from .layout import shard_key, tree_hash, write_eval_task, write_ground_truth, write_json, write_pool_shard
from .sampling import concept, pool_rows, reference_rows, shape_weights, tail_shapes
from .suite import eval_sets
from .world import WORLD_VERSION, World, WorldError

Config = Mapping[str, Any] | str | Path | None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIFTBENCH_CACHE") or Path.home() / ".cache" / "siftbench")


def ensure_world(
    cfg: Config = None,
    cache_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> World:
    """The world for ``cfg`` (merged over configs/world/default.yaml), generated on first use.

    It lives in ``<cache>/worlds/<version>-<config hash[:12]>/``; cache defaults to $SIFTBENCH_CACHE or
    ~/.cache/siftbench. A complete cached world is returned as is; two processes racing to create it
    both succeed and share the first one renamed into place.
    """
    resolved = resolve_config(cfg)
    root = Path(cache_dir or default_cache_dir()) / "worlds" / f"{WORLD_VERSION}-{config_hash(resolved)[:12]}"
    # A world is renamed into place whole, so a folder without world.json is a crash's leftover. Looking at
    # the folder before the file means a racer's rename landing in between is opened, never deleted.
    if root.exists() and not (root / "world.json").is_file():
        shutil.rmtree(root)
    if (root / "world.json").is_file():
        return World.open(root)
    try:
        return generate_world(resolved, root, workers=workers, progress=progress)
    except FileExistsError:
        return World.open(root)


def generate_world(
    cfg: Config, out_dir: str | Path, *, workers: int | None = None, progress: bool = True
) -> World:
    """Generate the world for ``cfg`` into ``out_dir`` (which must not exist or be empty).

    ``workers``: processes for the shards (default: up to 2); the output is identical for any value.
    Raises FileExistsError if ``out_dir`` holds anything.
    """
    resolved = resolve_config(cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; delete it, or use ensure_world() to reuse worlds")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_world(resolved, tmp, workers, progress)
        try:
            if out_dir.exists():
                out_dir.rmdir()  # a rename cannot replace a folder; fails if a racer filled it meanwhile
            os.rename(tmp, out_dir)
        except OSError as e:  # another process renamed its copy first
            raise FileExistsError(f"{out_dir} appeared while generating") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return World.open(out_dir)


def _write_world(cfg: dict[str, Any], root: Path, workers: int | None, progress: bool) -> None:
    tasks = eval_sets(cfg)
    pool = pool_rows(cfg, {name: t.rows for name, t in tasks.items()})
    reference = reference_rows(cfg)
    if {r["uid"] for r in pool} & {r["uid"] for r in reference}:
        raise WorldError("pool and reference uids collide; this is a generator bug, please report it")
    palette = {name: tuple(cfg["concepts"]["palette"][name]) for name in cfg["concepts"]["colours"]}
    size, per_shard = cfg["image_size"], cfg["samples_per_shard"]
    where = str(root)

    jobs: list[Callable[[], dict[str, str]]] = []
    for folder, rows in (("pool", pool), ("reference", reference)):
        for shard, start in enumerate(range(0, len(rows), per_shard)):
            chunk = rows[start : start + per_shard]
            for j, row in enumerate(chunk):
                row.update(shard=shard, key=shard_key(shard, j, per_shard))
            jobs.append(partial(write_pool_shard, where, folder, shard, chunk, palette, size, per_shard))
    for task in tasks.values():
        jobs.append(partial(write_eval_task, where, task, palette, size, cfg["eval"]["samples_per_shard"]))

    digests: dict[str, str] = {}
    for result in _run(jobs, workers, progress):
        digests |= result
    for row in pool:
        row["concept"] = concept(row)
    digests |= write_ground_truth(where, pool)
    suite = {"name": "world", "version": WORLD_VERSION, "tasks": [t.describe() for t in tasks.values()]}
    digests |= write_json(where, "eval/suite.json", suite)

    defects = {d: sum(r["defect"] == d for r in pool) for d in ("clean", *DEFECTS)}
    manifest = {
        "version": WORLD_VERSION,
        "config_hash": config_hash(cfg),
        "content_hash": tree_hash(digests),
        "counts": {
            "pool": len(pool),
            "reference": len(reference),
            "pool_shards": -(-len(pool) // per_shard),
            "reference_shards": -(-len(reference) // per_shard),
            "defects": defects,
            "eval": {name: len(t.rows) for name, t in tasks.items()},
        },
        "concepts": {"shape_weights": shape_weights(cfg), "tail_shapes": tail_shapes(cfg)},
        "config": cfg,
        "files": dict(sorted(digests.items())),
        # Informative only; not part of the content hash.
        "generated_with": library_versions(("numpy", "pillow", "pyarrow", "scikit-learn")),
    }
    write_json(where, "world.json", manifest)


def _run(
    jobs: list[Callable[[], dict[str, str]]], workers: int | None, progress: bool
) -> list[dict[str, str]]:
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    bar = partial(progress_bar, enabled=progress, total=len(jobs), desc="world shards", unit="shard")
    if workers <= 1:
        return [job() for job in bar(jobs)]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(bar(ex.map(_call, jobs)))


def _call(job: Callable[[], dict[str, str]]) -> dict[str, str]:
    return job()
