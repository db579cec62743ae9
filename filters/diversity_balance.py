from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, SelectContext, register_filter, uid_random

from .common.concepts import ConceptFilter, concept_counts, named_counts

CHOICES = ("frequent", "random")
CLASS_OF = ("combination", "rarest")


@register_filter("diversity_balance")
@dataclass
class DiversityBalance(ConceptFilter):
    """The intra- vs inter-class trade-off (Zhang, Ratner et al. 2023): for a budget of N samples and a
    ratio r = K / n, keep K = sqrt(r N) classes with n = sqrt(N / r) samples each.

    N is ``size`` or ``fraction`` of this step's candidates. A sample's class is the set of concepts it
    names (``class_of: combination``, so "red circle" is one class) or its rarest concept
    (``rarest``; ties to the lower vocabulary index). The K classes are the most frequent ones
    (``choose: frequent``, ties by class key) or a seeded draw (``random``, a hash of the class key and
    the seed). Inside a class the n samples with the smallest per-uid draw stay; a class with fewer keeps
    all it has (the shortfall is reported in the notes, not refilled).
    """

    alternatives = (("size", "fraction"),)

    size: int | None = None
    fraction: float | None = None
    ratio: float = 1.0
    choose: str = "frequent"
    class_of: str = "combination"

    def __post_init__(self) -> None:
        self._check_concepts()
        if (self.size is None) == (self.fraction is None):
            raise ConfigError(f"diversity_balance: give exactly one of size= or fraction= (got {self.size}, {self.fraction})")
        if self.size is not None and int(self.size) < 1:
            raise ConfigError(f"diversity_balance: size={self.size} must be >= 1")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"diversity_balance: fraction={self.fraction} must be in (0, 1]")
        if not self.ratio > 0:
            raise ConfigError(f"diversity_balance: ratio={self.ratio} must be > 0 (classes per sample-per-class)")
        if self.choose not in CHOICES:
            raise ConfigError(f"diversity_balance: choose={self.choose!r}; one of {CHOICES}")
        if self.class_of not in CLASS_OF:
            raise ConfigError(f"diversity_balance: class_of={self.class_of!r}; one of {CLASS_OF}")

    def budget(self, candidates: int) -> tuple[int, int, int]:
        """(N, K, n) for this many candidates."""
        total = int(self.size) if self.size is not None else int(candidates * self.fraction)
        k = max(1, round(math.sqrt(self.ratio * total)))
        n = max(1, round(math.sqrt(total / self.ratio)))
        return total, k, n

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        matrix, status, names = self.concepts(values, uids)
        has = np.flatnonzero(status == 0)
        total, k, n = self.budget(len(values))
        before = concept_counts(matrix, has, len(names))
        klass = np.full(len(values), -1, dtype=np.int64)
        keys = self._class_keys(matrix[has], before)
        class_keys, inverse, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        klass[has] = inverse.ravel()
        if self.choose == "frequent":
            order = np.lexsort((np.arange(len(sizes)), -sizes))  # most samples first; ties by class key
        else:
            draws = [_key_draw(row, ctx.seed) for row in class_keys]
            order = np.argsort(np.array(draws), kind="stable")
        chosen = np.zeros(len(sizes), dtype=bool)
        chosen[order[:k]] = True
        # Within each chosen class: the n samples with the smallest per-uid draw.
        draw = uid_random(uids, ctx.seed)
        in_chosen = np.flatnonzero((klass >= 0) & chosen[np.maximum(klass, 0)])
        ranked = in_chosen[np.lexsort((uids["f1"][in_chosen], uids["f0"][in_chosen], draw[in_chosen], klass[in_chosen]))]
        position = np.arange(len(ranked)) - np.searchsorted(klass[ranked], klass[ranked])
        keep = np.zeros(len(values), dtype=bool)
        keep[ranked[position < n]] = True
        decision = Decision.from_reasons(
            {
                "invalid_embedding": status == 1,
                "no_concept": status == 2,
                "class_not_chosen": (klass >= 0) & ~chosen[np.maximum(klass, 0)],
                "over_class_quota": (klass >= 0) & ~keep,
            },
            len(values),
        )
        short = int((sizes[chosen] < n).sum())
        decision.notes = {
            "budget": total, "classes_wanted": k, "per_class": n, "classes_available": len(sizes),
            "classes_kept": int(chosen.sum()), "classes_short": short, "kept": int(keep.sum()),
            "concept_counts_before": named_counts(before, names),
            "concept_counts_after": named_counts(concept_counts(matrix, np.flatnonzero(keep), len(names)), names),
        }  # fmt: skip
        return decision

    def _class_keys(self, matrix: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One row per sample: the sorted concept ids (padded -1 last) or the single rarest id."""
        if self.class_of == "rarest" or matrix.shape[1] == 1:
            big = np.iinfo(np.int64).max
            rarity = np.where(matrix >= 0, counts[np.maximum(matrix, 0)].astype(np.int64) * len(counts) + matrix, big)
            best = np.take_along_axis(matrix, np.argmin(rarity, axis=1)[:, None], axis=1)
            return best.astype(np.int64)
        keyed = np.where(matrix >= 0, matrix, np.iinfo(np.int32).max)
        return np.sort(keyed, axis=1).astype(np.int64)


def _key_draw(key: np.ndarray, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, key.tolist()))}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
