from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.image_hashing import mirror_thumbnails
from siftbench.benchmark.core.pool import ShardBatch

from .common.crops import crop_pairs
from .common.embeddings import embedding_frame, embedding_matrix
from .common.neighbours import (
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
    ``mirror``: a horizontally flipped copy counts too.
    ``crop`` (off when null): also a copy that shows a window of at least ``crop`` of another picture's
    side, rescaled to full size. A crop shifts every hash bit and every thumbnail cell, so it is tested
    explicitly (filters/_crops.py): the best-aligned window of the source within ``crop_radius`` RMS
    AND ``crop_contrast`` x the copy's own spread (near-uniform pictures would otherwise match
    everything). Crops are matched unmirrored: a crop of a flipped copy joins its group via the source.
    Reads the image-features stage's
    ``imagehash_*`` arrays; rows whose image did not decode are kept and counted as ``unhashed``.
    Inside a group the smallest uid (``first_uid``) or the smallest per-uid draw (``random``) stays,
    and a row is only dropped for an earlier row that was itself kept (no chaining).
    """

    hash: str = "phash"
    radius: float = 4
    mirror: bool = True
    keep: str = "first_uid"
    crop: float | None = None
    crop_radius: float = 8.0
    crop_contrast: float = 0.32

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
        if self.crop is not None and not 0.5 <= float(self.crop) < 1.0:
            raise ConfigError(f"perceptual_dedup: crop={self.crop} is the smallest crop as a share of the side; "
                              "use a value in [0.5, 1), or null for no crop matching")  # fmt: skip
        if not (0 < float(self.crop_radius) < 255 and 0 < float(self.crop_contrast) <= 1):
            raise ConfigError(f"perceptual_dedup: crop_radius={self.crop_radius} must be in (0, 255) and "
                              f"crop_contrast={self.crop_contrast} in (0, 1]")  # fmt: skip

    def embeddings(self) -> tuple[str, ...]:
        small = ("imagehash_small",) if self.crop is not None else ()
        if self.hash == "thumbnail":
            return ("imagehash_thumb", "imagehash_ok", *small)
        return (f"imagehash_{self.hash}", f"imagehash_{self.hash}_mirror", "imagehash_ok", *small)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        ok = np.asarray(batch.embeddings["imagehash_ok"]).astype(bool)
        if self.hash == "thumbnail":
            frame = embedding_frame(batch.embeddings["imagehash_thumb"], prefix="px")
        else:
            frame = pd.DataFrame({
                "code": np.asarray(batch.embeddings[f"imagehash_{self.hash}"], dtype=np.uint64),
                "mirror_code": np.asarray(batch.embeddings[f"imagehash_{self.hash}_mirror"], dtype=np.uint64),
            })  # fmt: skip
        if self.crop is not None:
            small = embedding_frame(batch.embeddings["imagehash_small"], prefix="sm").astype(np.uint8)
            frame = pd.concat([frame, small], axis=1)
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
            i, j = self._thumbnail_pairs(keys[leader], rank[lead_rows])
        else:
            mirrored = values["mirror_code"].to_numpy(dtype=np.uint64)[lead_rows] if self.mirror else None
            i, j = hamming_pairs(keys[leader], int(self.radius), mirrored)
        notes = {"unhashed": int((~hashed).sum()), "identical_codes": int((~leader).sum())}
        if self.crop is not None:
            ci, cj = self._crop_pairs(values, lead_rows, rank[lead_rows])
            notes["crop_pairs"] = len(ci)
            i, j = np.concatenate([i, ci]), np.concatenate([j, cj])
        dropped_leaders = greedy_drop(rank[lead_rows], i, j)
        duplicate = np.zeros(len(values), dtype=bool)
        duplicate[rows[~leader]] = True
        duplicate[lead_rows[dropped_leaders]] = True
        decision = Decision.from_mask(~duplicate, "near_duplicate")
        decision.notes = notes
        return decision

    def _crop_pairs(self, values: pd.DataFrame, rows: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crop pairs among ``rows`` (as positions into ``rows``), searched in rank order so that the
        shard order cannot change the index, and so the pairs."""
        order = np.argsort(rank, kind="stable")
        small = embedding_matrix(values, prefix="sm")[rows[order]].astype(np.uint8)
        i, j = crop_pairs(small, min_crop=float(self.crop or 0), radius=float(self.crop_radius),
                          contrast=float(self.crop_contrast), mirror=False)  # fmt: skip
        return order[i], order[j]

    def _thumbnail_pairs(self, thumbs: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(thumbs)
        if n < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
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
        return packed // n, packed % n

