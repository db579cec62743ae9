"""The world's CLIP scoring model: trained on the clean reference set, cached, then used to embed the pool.

DataComp's pools ship CLIP scores; the embedded world has none, and no weights can be downloaded, so
siftbench trains a small CLIP on trusted pairs (as DFN trains its filtering network) and writes the
pool's embeddings and ``clip_<name>_similarity_score`` the same way ``siftbench embed`` does for any model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import atomic_path
from siftbench.benchmark.core.errors import StageError
from siftbench.benchmark.core.filtering import uid_random
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.scales import load_scale
from siftbench.benchmark.core.uids import sort_uids
from siftbench.benchmark.stages.embed import embed_pool
from siftbench.benchmark.stages.reshard import reshard
from siftbench.benchmark.stages.train import train

from .generate import ensure_world


def scorer_fingerprint(scorer_cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(scorer_cfg, sort_keys=True).encode()).hexdigest()[:12]


def ensure_scorer(world: Any, scorer_cfg: dict[str, Any], device: str = "cpu", workers: int = 1) -> str:
    """Train (once) and apply (once) the scorer; return its model key, e.g. ``scorer``.

    The world's folders are its cache: embeddings that another scorer of the same name made (their
    stage.json names other weights), or that an older siftbench made, are recomputed, never reused."""
    name = scorer_cfg["name"]
    checkpoint = train_scorer(world, scorer_cfg, device=device)
    embed_pool(Path(world.pool_dir), arch=scorer_cfg["arch"], model_key=name, checkpoint=checkpoint, device=device,
               on_change="restart")
    return name


def scorer_folder(world: Any, scorer_cfg: dict[str, Any]) -> Path:
    return Path(world.root) / "scorers" / f"{scorer_cfg['name']}-{scorer_fingerprint(scorer_cfg)}"


def train_scorer(world: Any, scorer_cfg: dict[str, Any], device: str = "cpu") -> Path:
    folder = scorer_folder(world, scorer_cfg)
    reference = Pool.open(world.reference_dir)
    uids = reference.all_uids()
    size = scorer_cfg.get("reference_size")
    if size is not None and size < len(uids):
        # A seed-independent, uid-hashed choice: the same reference_size always means the same pairs.
        uids = uids[np.argsort(uid_random(uids, 0), kind="stable")[:size]]
    shards = folder / "shards"
    reshard(Path(world.reference_dir), sort_uids(uids), shards, seed=0, progress=False, on_change="restart")
    scale = {
        **load_scale("tiny"),
        "name": f"scorer:{scorer_cfg['name']}",
        "model": scorer_cfg["arch"],
        "samples_seen": int(scorer_cfg["samples_seen"]),
        "global_batch": int(scorer_cfg["global_batch"]),
        "lr": float(scorer_cfg["lr"]),
        "epochs": int(scorer_cfg.get("epochs", 1)),
    }
    return train(shards, scale, folder / "train", seed=0, device=device)


def reference_image_targets(world: Any, scorer_cfg: dict[str, Any], device: str = "cpu") -> Path:
    """Targets for DataComp's image-based filter on the world: the scorer's image embeddings of the clean
    reference set, cached beside the scorer. DataComp used ImageNet's training images, curated pictures
    of what the evaluation asks about; the reference set plays that part here. (Text embeddings of concept
    prompts were tried first: the gap between the text and image sides of a CLIP space sent all 106
    prompts to a few clusters, 16% of the pool.)"""
    folder = scorer_folder(world, scorer_cfg)
    path = folder / "reference_image_targets.npy"
    if path.exists():
        return path
    checkpoint = train_scorer(world, scorer_cfg, device=device)
    # Beside this scorer, not in the reference pool under its name: another scorer config of the same name
    # has its own folder, so neither clashes with nor reuses these embeddings.
    embeddings = folder / "reference_embeddings"
    embed_pool(Path(world.reference_dir), arch=scorer_cfg["arch"], model_key=scorer_cfg["name"],
               checkpoint=checkpoint, device=device, progress=False, out_dir=embeddings, on_change="restart")  # fmt: skip
    images = []
    for npz in sorted(embeddings.glob("*.npz")):
        with np.load(npz, allow_pickle=False) as z:
            images.append(z["image"].astype(np.float32))
    targets = np.concatenate(images)
    targets = targets[np.isfinite(targets).all(axis=1)]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, targets)
    return path


def world_scorer_checkpoint(world_cfg: dict[str, Any], scorer: dict[str, Any], arch: str) -> Path:
    """The embedded world's scoring model (``--pretrained world``): trained on the clean reference set
    once and cached in the world folder, as ``siftbench run`` does before clip_score."""
    if scorer["arch"] != arch:
        raise StageError(f"the world's scoring model is a {scorer['arch']!r}, not {arch!r}: pass --model {scorer['arch']}")
    return Path(train_scorer(ensure_world(world_cfg), scorer))
