from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter, uid_random
from siftbench.benchmark.core.pool import ShardBatch

from .common.embeddings import embedding_frame, embedding_matrix
from .common.neighbours import clustered_pairs, first_of_groups, greedy_drop, rank_by, uid_rank

KEEP_POLICIES = ("first_uid", "random", "central", "outlier")
REASONS = ("invalid_embedding", "semantic_duplicate")


@register_filter("semantic_dedup")
@dataclass
class SemanticDedup(Filter):
    """SemDeDup: spherical k-means on an embedding, then inside each cluster drop an item whose cosine
    similarity to an earlier kept item exceeds ``1 - eps``.

    ``keep`` chooses which member of a duplicate group is "earlier": ``first_uid`` (smallest uid),
    ``random`` (a per-uid draw from the run seed), ``central`` (closest to its centroid, the
    prototypical one) or ``outlier`` (farthest, SemDeDup's "hard" choice); ties go to the smaller uid.
    ``n_clusters`` defaults to sqrt(N / 2) (where assigning and pairing cost the same); a row within ``margin`` (cosine) of a second
    centroid is compared in that cluster too, so pairs split by a boundary are still found.
    Rows whose embedding is NaN, infinite or zero are dropped as ``invalid_embedding``.
    """

    embedding: str = "b32_img"
    eps: float = 0.05
    keep: str = "first_uid"
    n_clusters: int | None = None
    margin: float = 0.02
    iterations: int = 10
    kmeans_seed: int = 0

    def __post_init__(self) -> None:
        check_eps("semantic_dedup", self.eps)
        if self.keep not in KEEP_POLICIES:
            raise ConfigError(f"semantic_dedup: keep={self.keep!r}; choose one of {KEEP_POLICIES}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"semantic_dedup: n_clusters={self.n_clusters} must be >= 1 (or null for automatic)")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"semantic_dedup: margin={self.margin} must be in [0, 1)")

    def embeddings(self) -> tuple[str, ...]:
        return (self.embedding,)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        return embedding_frame(batch.embeddings[self.embedding])

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        result = semantic_dedup(
            embedding_matrix(values), uids, eps=self.eps, keep=self.keep, seed=ctx.seed, n_clusters=self.n_clusters,
            margin=self.margin, niter=self.iterations, kmeans_seed=self.kmeans_seed,
        )  # fmt: skip
        return Decision(keep=result.reason == 0, reason=result.reason, reason_names=REASONS)


def check_eps(who: str, eps: float) -> None:
    if not 0.0 < float(eps) < 1.0:
        raise ConfigError(f"{who}: eps={eps} must be in (0, 1); pairs with cosine similarity > 1 - eps are duplicates")


@dataclass
class SemDedupResult:
    reason: np.ndarray  # int8 per row: 0 kept, 1 invalid_embedding, 2 semantic_duplicate
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.reason == 0


def semantic_dedup(
    vectors: Any,
    uids: np.ndarray | None = None,
    *,
    eps: float,
    keep: str = "first_uid",
    seed: int = 0,
    n_clusters: int | None = None,
    margin: float = 0.02,
    niter: int = 10,
    kmeans_seed: int = 0,
    train_sample: int | None = None,
    workers: int | None = None,
    chunk: int = 65536,
) -> SemDedupResult:
    """SemDeDup over a (rows, dim) array, which may be a read-only memory map of float16 rows.

    Memory: the array is read in chunks and per cluster; beside it only a few int64/float32 arrays of
    N live (uids, ranks, labels). Without ``uids`` rows are ranked by position (row 0 first).
    """
    check_eps("semantic_dedup", eps)
    if keep not in KEEP_POLICIES:
        raise ConfigError(f"semantic_dedup: keep={keep!r}; choose one of {KEEP_POLICIES}")
    if keep == "random" and uids is None:
        raise ConfigError("semantic_dedup: keep='random' needs the uids (the draw is per uid)")
    n = len(vectors)
    clock = time.perf_counter()
    reason = np.zeros(n, dtype=np.int8)
    if n == 0:
        return SemDedupResult(reason, {"rows": 0})
    base_rank = uid_rank(uids) if uids is not None else np.arange(n)
    first_rank = rank_by(uid_random(uids, seed), uids) if keep == "random" else base_rank

    valid, fingerprint = _scan(vectors, chunk)
    reason[~valid] = 1
    # Identical embeddings (exact duplicate images) share every neighbour: keep the first of each group
    # and search among the first ones only, so a thousand copies never cost a million pairs.
    rows = np.flatnonzero(valid)
    groups = _identical_groups(vectors, rows, fingerprint[rows])
    leader = np.zeros(n, dtype=bool)
    leader[rows[first_of_groups(groups, first_rank[rows])]] = True
    reason[valid & ~leader] = 2
    scanned = time.perf_counter() - clock

    i, j, _, centre, cstats = clustered_pairs(
        vectors, 1.0 - eps, metric="cosine", valid=leader, rank=base_rank, n_clusters=n_clusters, margin=margin,
        niter=niter, seed=kmeans_seed, train_sample=train_sample, workers=workers,
    )  # fmt: skip
    if keep in ("central", "outlier"):
        keyed = uids if uids is not None else _position_uids(n)
        order_rank = rank_by(centre, keyed, descending=keep == "central")
    else:
        order_rank = first_rank
    clock = time.perf_counter()
    dropped = greedy_drop(order_rank, i, j)
    reason[dropped & (reason == 0)] = 2
    stats = {
        "rows": n,
        "invalid": int(valid.size - valid.sum()),
        "identical_copies": int((valid & ~leader).sum()),
        "clusters": cstats.clusters,
        "largest_cluster": cstats.largest_cluster,
        "boundary_rows": cstats.guests,
        "pairs_above_threshold": cstats.pairs,
        "dropped": int((reason == 2).sum()),
        "seconds": {"scan": round(scanned, 3), **{k: round(v, 3) for k, v in cstats.seconds.items()},
                    "greedy": round(time.perf_counter() - clock, 3)},
    }  # fmt: skip
    return SemDedupResult(reason, stats)


def _scan(vectors: Any, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: valid (finite, non-zero) and a 64-bit fingerprint of its bytes, one chunk at a time."""
    n, dim = vectors.shape
    valid = np.empty(n, dtype=bool)
    fingerprint = np.empty(n, dtype=np.uint64)
    width = np.dtype(vectors.dtype).itemsize * dim
    words = -(-width // 8)
    multipliers = np.random.default_rng(0x5EED).integers(1, 2**63, size=words, dtype=np.uint64) | np.uint64(1)
    for s in range(0, n, chunk):
        x = np.ascontiguousarray(vectors[s : s + chunk])
        valid[s : s + len(x)] = np.isfinite(x).all(axis=1) & (x != 0).any(axis=1)
        raw = x.view(np.uint8).reshape(len(x), width)
        if width % 8:
            raw = np.pad(raw, ((0, 0), (0, words * 8 - width)))
        with np.errstate(over="ignore"):
            h = (raw.view(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)
            h ^= h >> np.uint64(29)
        fingerprint[s : s + len(x)] = h
    return valid, fingerprint


def _identical_groups(vectors: Any, rows: np.ndarray, fingerprint: np.ndarray) -> np.ndarray:
    """Group id per row of ``rows`` for byte-identical vectors (fingerprint, then verified)."""
    _, groups, counts = np.unique(fingerprint, return_inverse=True, return_counts=True)
    groups = groups.ravel().astype(np.int64)
    shared = np.flatnonzero(counts[groups] > 1)
    if len(shared):
        # Verify against each group's first member; a fingerprint collision becomes its own group.
        members = rows[shared]
        order = np.argsort(groups[shared], kind="stable")
        g_sorted = groups[shared][order]
        first = np.searchsorted(g_sorted, g_sorted)
        reference = members[order][first]
        same = np.ones(len(members), dtype=bool)
        for s in range(0, len(members), 65536):
            a = np.asarray(vectors[members[order][s : s + 65536]])
            b = np.asarray(vectors[reference[s : s + 65536]])
            same[s : s + len(a)] = (a.view(np.uint8) == b.view(np.uint8)).reshape(len(a), -1).all(axis=1)
        odd = shared[order][~same]
        groups[odd] = groups.max() + 1 + np.arange(len(odd))
    return groups


def _position_uids(n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.dtype("u8,u8"))
    out["f1"] = np.arange(n, dtype=np.uint64)
    return out
