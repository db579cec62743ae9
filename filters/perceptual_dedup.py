from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.image_hashing import mirror_thumbnails
from siftbench.benchmark.core.pool import ShardBatch

from ._embeddings import embedding_frame, embedding_matrix
from ._neighbours import (
    KEEP_ORDERS,
    clustered_pairs,
    first_of_groups,
    greedy_drop,
    group_keys,
    hamming_pairs,
    keep_rank,
)

HASHES = ("phash", "dhash", "thumbnail")


@register_filter("perceptual_dedup")
@dataclass
class PerceptualDedup(Filter):
    """Near-duplicate images (re-encoded, resized, flipped copies) by perceptual distance.

    ``hash: phash | dhash``: 64-bit imagehash codes, duplicates within ``radius`` Hamming bits, found by
    multi-index hashing (radius + 1 blocks; cost grows with the bucket sizes, not N^2).
    ``hash: thumbnail``: the 8x8 RGB thumbnail, duplicates within ``radius`` root-mean-square pixel
    difference (0-255), found inside k-means cells with boundary rows probed twice. On small or
    synthetic images grey-level 64-bit hashes put unrelated pictures within a few bits of each other,
    colour thumbnails do not (measured on the embedded world: see the tests).
    ``mirror``: a horizontally flipped copy counts too. Reads the image-features stage's
    ``imagehash_*`` arrays; rows whose image did not decode are kept and counted as ``unhashed``.
    Inside a group the smallest uid (``first_uid``) or the smallest per-uid draw (``random``) stays,
    and a row is only dropped for an earlier row that was itself kept (no chaining).
    """

    hash: str = "phash"
    radius: float = 4
    mirror: bool = True
    keep: str = "first_uid"

    def __post_init__(self) -> None:
        if self.hash not in HASHES:
            raise ConfigError(f"perceptual_dedup: hash={self.hash!r}; choose one of {HASHES}")
        if self.keep not in KEEP_ORDERS:
            raise ConfigError(f"perceptual_dedup: keep={self.keep!r}; choose one of {KEEP_ORDERS}")
        if self.hash == "thumbnail":
            if not 0 <= float(self.radius) < 255:
                raise ConfigError(f"perceptual_dedup: radius={self.radius} must be an RMS pixel difference in [0, 255)")
        elif not (float(self.radius).is_integer() and 0 <= self.radius <= 16):
            raise ConfigError(f"perceptual_dedup: radius={self.radius} must be a whole number of bits in [0, 16]")

    def embeddings(self) -> tuple[str, ...]:
        if self.hash == "thumbnail":
            return ("imagehash_thumb", "imagehash_ok")
        return (f"imagehash_{self.hash}", f"imagehash_{self.hash}_mirror", "imagehash_ok")

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        ok = np.asarray(batch.embeddings["imagehash_ok"]).astype(bool)
        if self.hash == "thumbnail":
            frame = embedding_frame(batch.embeddings["imagehash_thumb"], prefix="px")
        else:
            frame = pd.DataFrame({
                "code": np.asarray(batch.embeddings[f"imagehash_{self.hash}"], dtype=np.uint64),
                "mirror_code": np.asarray(batch.embeddings[f"imagehash_{self.hash}_mirror"], dtype=np.uint64),
            })  # fmt: skip
        frame["hashed"] = ok
        return frame

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        hashed = values["hashed"].to_numpy(dtype=bool)
        rows = np.flatnonzero(hashed)
        rank = keep_rank(self.keep, uids, ctx.seed)
        if self.hash == "thumbnail":
            keys = embedding_matrix(values, prefix="px")[rows].astype(np.uint8)
        else:
            keys = values["code"].to_numpy(dtype=np.uint64)[rows]
        # Identical codes are one group up front: their first member stands for all of them, so a
        # thousand identical images cost one row, not half a million pairs.
        leader = first_of_groups(group_keys(keys), rank[rows])
        lead_rows = rows[leader]
        if self.hash == "thumbnail":
            dropped_leaders = self._thumbnail_drops(keys[leader], rank[lead_rows])
        else:
            mirrored = values["mirror_code"].to_numpy(dtype=np.uint64)[lead_rows] if self.mirror else None
            i, j = hamming_pairs(keys[leader], int(self.radius), mirrored)
            dropped_leaders = greedy_drop(rank[lead_rows], i, j)
        duplicate = np.zeros(len(values), dtype=bool)
        duplicate[rows[~leader]] = True
        duplicate[lead_rows[dropped_leaders]] = True
        decision = Decision.from_mask(~duplicate, "near_duplicate")
        decision.notes = {"unhashed": int((~hashed).sum()), "identical_codes": int((~leader).sum())}
        return decision

    def _thumbnail_drops(self, thumbs: np.ndarray, rank: np.ndarray) -> np.ndarray:
        n = len(thumbs)
        if n < 2:
            return np.zeros(n, dtype=bool)
        vectors = np.concatenate([thumbs, mirror_thumbnails(thumbs)]) if self.mirror else thumbs
        both_rank = np.concatenate([rank, rank]) if self.mirror else rank
        # Rows n.. are the mirrored thumbnails of rows 0..n-1: a pair (a, b + n) means a ~ flip(b).
        # margin 2 * radius: a pair split by a boundary is found from its row with a second probe.
        i, j, *_ = clustered_pairs(vectors.astype(np.float32), float(self.radius), metric="rms", rank=both_rank,
                                   margin=2 * float(self.radius), n_clusters=max(1, round((len(vectors) / 2) ** 0.5)))  # fmt: skip
        i, j = i % n, j % n
        distinct = i != j
        i, j = np.minimum(i[distinct], j[distinct]), np.maximum(i[distinct], j[distinct])
        packed = np.unique(i * n + j)
        return greedy_drop(rank, packed // n, packed % n)

