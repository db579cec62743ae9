"""Where a pool comes from: everything the runner needs from it, whichever pool it is.

Two sources answer through one interface: a user's DataComp pool folder (``DataCompPool``, here) and the
embedded world (``benchmark/world/source.py``), so no stage or runner branch checks a filter's name.
A filter that needs something only the source can give declares it on a parameter with
``from_source(resource)``; ``fill_resources`` asks the source for each one the config leaves null.

Resources a filter may declare:

- ``eval_root``: the folder of the eval suite's tasks (eval_decontam matches pool images against it);
- ``image_targets``: a ``.npy`` of target image embeddings in the space of the step's ``embedding``
  (image_based; on the world, its scorer's embeddings of the clean reference images);
- ``ground_truth``: the path of the world's ``ground_truth.parquet`` (the oracle; a real pool has none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ConfigError
from .filtering import config_steps, filter_class, source_fields
from .pool import Pool


class PoolSource(Protocol):
    """What the runner needs from where the pool comes from."""

    @property
    def pool_dir(self) -> Path:
        """The pool folder, in DataComp's layout."""

    def pool_identity(self) -> dict[str, Any]:
        """results.json's ``pool``: path, size and a hash that changes when the pool does."""

    def world_identity(self) -> dict[str, Any] | None:
        """results.json's ``world``: the generated world's version and content hash; None for a real pool."""

    def eval_root(self) -> Path:
        """The folder holding the eval suite's datasets."""

    def resource(self, name: str, step: Mapping[str, Any]) -> Any:
        """The value of resource ``name`` for the filter step ``step`` (its config, name included)."""

    def prepare(self, wanted: Sequence[str]) -> None:
        """Make derived data the filters read (columns and embedding keys in ``wanted``) where the source
        can make it: the world computes its scorer's embeddings. Anything else is the pool's to hold."""

    def diagnostics(self, subset: np.ndarray) -> dict[str, Any] | None:
        """What a subset kept and removed of each planted defect; None where nothing was planted."""


@dataclass
class DataCompPool:
    """A user's pool folder in DataComp's layout; its eval sets are wherever ``eval_root`` says."""

    root: Path
    eval_folder: Path | None = None

    @property
    def pool_dir(self) -> Path:
        return Path(self.root)

    def pool_identity(self) -> dict[str, Any]:
        pool = Pool.open(self.root)
        return {"path": str(self.root), "size": len(pool), "hash": pool.fingerprint()}

    def world_identity(self) -> None:
        return None

    def eval_root(self) -> Path:
        if self.eval_folder is None:
            raise ConfigError("a real pool has no built-in eval sets: pass eval_root=<folder with the suite's datasets>")
        return Path(self.eval_folder)

    def resource(self, name: str, step: Mapping[str, Any]) -> Any:
        who = f"filter {step.get('name')!r}"
        if name == "eval_root":
            if self.eval_folder is None:
                raise ConfigError(f"{who} needs the eval sets' folder and pool={self.root} has none: pass "
                                  "eval_root=<folder with the suite's datasets>")  # fmt: skip
            return str(self.eval_folder)
        if name == "ground_truth":
            raise ConfigError(f"{who} needs the embedded world's ground truth, which a real pool (pool={self.root}) "
                              "does not have: run it on the world (leave pool= unset)")  # fmt: skip
        if name == "image_targets":
            raise ConfigError(f"{who} needs target embeddings: give it targets=<.npy of embeddings made by the "
                              f"model of {step.get('embedding')!r}>")  # fmt: skip
        raise ConfigError(f"{who} needs {name!r}, which a DataComp pool folder cannot provide; set it in the config")

    def prepare(self, wanted: Sequence[str]) -> None:
        return None  # a real pool holds its columns and embeddings; select names any that are missing

    def diagnostics(self, subset: np.ndarray) -> None:
        return None


def fill_resources(filter_cfg: Mapping[str, Any], source: PoolSource) -> dict[str, Any]:
    """A copy of the filter config in which every ``from_source`` parameter left null holds the source's value."""
    filled = {**filter_cfg}
    steps = [dict(step) for step in config_steps(filter_cfg)]
    for step in steps:
        if not step.get("name"):
            continue  # select names the missing name
        for param, resource in source_fields(filter_class(step["name"])).items():
            if step.get(param) is None:
                step[param] = source.resource(resource, step)
    if "steps" in filter_cfg:
        filled["steps"] = steps
        return filled
    return steps[0]
