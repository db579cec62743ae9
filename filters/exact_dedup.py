from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.image_hashing import hex_sha256_words, sha256_valid
from siftbench.benchmark.core.pool import ShardBatch

from .common.neighbours import KEEP_ORDERS, first_of_groups, group_keys, keep_rank

SOURCES = ("column", "image")


@register_filter("exact_dedup")
@dataclass
class ExactDedup(Filter):
    """Keep one sample per identical image: equal sha256 of the image bytes.

    ``source: column`` reads the pool's ``sha256`` metadata column (img2dataset writes it; DataComp
    ships it); ``source: image`` reads ``imagehash_sha256`` from the image-features stage. The survivor of
    a group is the smallest uid (``keep: first_uid``) or the smallest per-uid draw (``random``). Rows
    without a usable digest (missing, malformed, no image) cannot be compared: they are kept and
    counted in the notes as ``unhashed``.
    """

    source: str = "column"
    column: str = "sha256"
    keep: str = "first_uid"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"exact_dedup: source={self.source!r}; choose one of {SOURCES}")
        if self.keep not in KEEP_ORDERS:
            raise ConfigError(f"exact_dedup: keep={self.keep!r}; choose one of {KEEP_ORDERS}")

    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.source == "column" else ()

    def embeddings(self) -> tuple[str, ...]:
        return ("imagehash_sha256",) if self.source == "image" else ()

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        if self.source == "column":
            words, valid = hex_sha256_words(batch.table[self.column].to_numpy(dtype=object))
        else:
            words = np.asarray(batch.embeddings["imagehash_sha256"], dtype=np.uint64).reshape(len(batch), 4)
            valid = sha256_valid(words)
        frame = pd.DataFrame(words, columns=[f"sha{i}" for i in range(4)])
        frame["hashed"] = valid
        return frame

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        hashed = values["hashed"].to_numpy(dtype=bool)
        rows = np.flatnonzero(hashed)
        words = np.stack([values[f"sha{i}"].to_numpy(dtype=np.uint64) for i in range(4)], axis=1)[rows]
        rank = keep_rank(self.keep, uids, ctx.seed)
        first = first_of_groups(group_keys(words), rank[rows])
        duplicate = np.zeros(len(values), dtype=bool)
        duplicate[rows[~first]] = True
        decision = Decision.from_mask(~duplicate, "exact_duplicate")
        decision.notes = {"unhashed": int((~hashed).sum()), "distinct_images": int(first.sum())}
        return decision
