"""The embedded world as a pool source (core/source.py): its pool, its eval suite, its scorer's
embeddings, the reference images' embeddings as image targets, its ground truth and its diagnostics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.pool import Pool

from .generate import ensure_world
from .scorer import ensure_scorer, reference_image_targets
from .world import World


@dataclass
class WorldSource:
    """A generated world, the scorer config that scores it, and the device the scorer runs on."""

    world: World
    scorer: dict[str, Any]
    device: str = "cpu"
    eval_folder: Path | None = None  # eval_root=...: another suite folder than the world's own

    @classmethod
    def open(cls, world_cfg: Any, scorer_cfg: dict[str, Any], device: str = "cpu",
             eval_root: str | Path | None = None) -> WorldSource:  # fmt: skip
        """The world for ``world_cfg``, generated on first use and cached (``ensure_world``)."""
        return cls(ensure_world(world_cfg), scorer_cfg, device, Path(eval_root) if eval_root else None)

    @property
    def pool_dir(self) -> Path:
        return self.world.pool_dir

    def pool_identity(self) -> dict[str, Any]:
        return {"path": str(self.pool_dir), "size": len(Pool.open(self.pool_dir)), "hash": self.world.content_hash}

    def world_identity(self) -> dict[str, Any]:
        return {"version": self.world.version, "hash": self.world.content_hash}

    def eval_root(self) -> Path:
        return self.eval_folder or self.world.eval_dir

    def resource(self, name: str, step: Mapping[str, Any]) -> Any:
        who = f"filter {step.get('name')!r}"
        if name == "eval_root":
            return str(self.eval_root())
        if name == "ground_truth":
            return str(self.world.ground_truth_path)
        if name == "image_targets":
            # The reference images embedded by the world's scorer: targets only in that scorer's space.
            if step.get("embedding") != f"{self.scorer['name']}_img":
                raise ConfigError(f"{who}: targets is empty and embedding {step.get('embedding')!r} is not the world "
                                  f"scorer's ({self.scorer['name']}_img); give targets=<.npy of target embeddings>")  # fmt: skip
            return str(reference_image_targets(self.world, self.scorer, device=self.device))
        raise ConfigError(f"{who} needs {name!r}, which the embedded world does not provide; set it in the config")

    def prepare(self, wanted: Sequence[str]) -> None:
        """Train (once) and apply (once) the world's scorer when a filter reads its scores or embeddings."""
        key = self.scorer["name"]
        if set(wanted) & {f"clip_{key}_similarity_score", f"{key}_img", f"{key}_txt"}:
            ensure_scorer(self.world, self.scorer, device=self.device)

    def diagnostics(self, subset: np.ndarray) -> dict[str, Any]:
        return self.world.diagnostics(subset)
