"""The filter contract: a per-shard map that computes values, a global reduce that decides.

A filter is a dataclass registered by name. ``score`` is a pure function of one metadata shard
(columns + embeddings) returning per-row values; ``select`` runs once over the values of every row
still in the running and returns which rows to keep and why the others were dropped. Everything
else (parallelism, stats, resume, composition) lives in the pipeline, not in the filter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .errors import ConfigError
from .pool import ShardBatch
from .registry import Registry

FILTERS: Registry[type[Filter]] = Registry(
    "filter", entry_point_group="siftbench.filters", builtin_modules=("siftbench.filters",)
)


def register_filter(name: str):
    """Class decorator: ``@register_filter("clip_score")`` makes the filter available by that name."""

    def decorator(cls: type[Filter]) -> type[Filter]:
        cls.name = name
        FILTERS.add(name, cls)
        return cls

    return decorator


@dataclass
class SelectContext:
    """What a global reduce may know besides the values: the seed and the pool's size."""

    seed: int
    pool_size: int


@dataclass
class Decision:
    """Per row: keep or drop, and for dropped rows the first reason that dropped it.

    ``reason`` holds small integer codes (0 = kept, i = ``reason_names[i - 1]``): a million rows of
    Python strings would cost more than the filtering itself.
    """

    keep: np.ndarray
    reason: np.ndarray
    reason_names: tuple[str, ...]
    # What a filter wants recorded beside its drop counts (concept counts, cluster sizes): JSON-able.
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Times each kept row goes into the subset (upsampling, e.g. balancing by resampling); None = once.
    repeats: np.ndarray | None = None

    @classmethod
    def from_mask(cls, keep: np.ndarray, reason: str) -> Decision:
        keep = np.asarray(keep, dtype=bool)
        return cls(keep=keep, reason=(~keep).astype(np.int8), reason_names=(reason,))

    @classmethod
    def from_reasons(cls, reasons: dict[str, np.ndarray], rows: int) -> Decision:
        """Several named drop conditions; a row dropped by more than one is counted under the first."""
        code = np.zeros(rows, dtype=np.int8)
        for i, dropped in enumerate(reasons.values(), start=1):
            code[(code == 0) & np.asarray(dropped, dtype=bool)] = i
        return cls(keep=code == 0, reason=code, reason_names=tuple(reasons))

    def dropped(self) -> dict[str, int]:
        """Counts per drop reason (reasons that dropped nothing are left out)."""
        counts = np.bincount(self.reason, minlength=len(self.reason_names) + 1)[1:]
        return {name: int(n) for name, n in zip(self.reason_names, counts, strict=True) if n}


@dataclass
class Filter:
    """Base class. Subclasses are dataclasses whose fields are the filter's parameters."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump whenever the filter's output changes for the same input

    def columns(self) -> tuple[str, ...]:
        """Metadata columns ``score`` reads (besides uid)."""
        return ()

    def embeddings(self) -> tuple[str, ...]:
        """Embedding keys ``score`` reads, e.g. ``("b32_img", "b32_txt")``."""
        return ()

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        """Per-row values for one shard, same row order as ``batch``. Default: nothing to compute."""
        return pd.DataFrame(index=range(len(batch)))

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        raise NotImplementedError(f"filter {self.name!r} must implement select()")

    # -- bookkeeping shared by every filter ---------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params()}


def build_filter(name: str, params: dict[str, Any] | None = None) -> Filter:
    """Instantiate a registered filter; unknown parameters are a ConfigError listing the known ones."""
    cls = FILTERS.get(name)
    if not cls.name:  # registered through an entry point rather than @register_filter
        cls.name = name
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"filter {name!r}: unknown parameter(s) {unknown}; it takes {sorted(known) or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"filter {name!r}: {e}") from None


def uid_random(uids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per uid that depends only on (uid, seed): shard order cannot change it."""
    raw = np.ascontiguousarray(uids).view(np.uint8).reshape(len(uids), 16)
    key = hashlib.sha256(f"siftbench-seed-{seed}".encode()).digest()[:16]
    mixed = raw ^ np.frombuffer(key, dtype=np.uint8)
    words = mixed.view(np.uint64)
    # splitmix64 finaliser over both words: cheap, well mixed, vectorised.
    with np.errstate(over="ignore"):
        x = words[:, 0] ^ (words[:, 1] * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
