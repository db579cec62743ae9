"""Near-duplicate search shared by the dedup and decontamination filters.

Everything here works on whole arrays (no per-row Python) and never compares all N^2 pairs:
identical keys are grouped by sorting, Hamming neighbours are found with multi-index hashing, and
neighbours in a vector space are searched inside k-means clusters (SemDeDup's way). Which member of a
duplicate group survives is decided by a *rank* (uid order by default), never by row order, so shard
order and worker count cannot change a subset.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from siftbench.benchmark.core.filtering import uid_random

KEEP_ORDERS = ("first_uid", "random")

# -- ranks and groups -------------------------------------------------------------------------------


def uid_rank(uids: np.ndarray) -> np.ndarray:
    """Position of each row when rows are sorted by uid (0 = smallest)."""
    order = np.lexsort((uids["f1"], uids["f0"]))
    rank = np.empty(len(uids), dtype=np.int64)
    rank[order] = np.arange(len(uids))
    return rank


def rank_by(values: np.ndarray, uids: np.ndarray, descending: bool = False) -> np.ndarray:
    """Rank rows by a value, ties broken by uid; NaN and infinite values rank after every finite one."""
    v = -np.asarray(values, dtype=np.float64) if descending else np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.inf)  # never first: -inf would outrank every real value
    order = np.lexsort((uids["f1"], uids["f0"], v))
    rank = np.empty(len(uids), dtype=np.int64)
    rank[order] = np.arange(len(uids))
    return rank


def keep_rank(keep: str, uids: np.ndarray, seed: int) -> np.ndarray:
    """The order in which duplicates are kept: by uid, or by a per-uid draw from the seed."""
    return uid_rank(uids) if keep == "first_uid" else rank_by(uid_random(uids, seed), uids)


def group_keys(keys: np.ndarray) -> np.ndarray:
    """Group id per row for equal keys (rows of a 2-D array compare as whole rows)."""
    keys = np.ascontiguousarray(keys)
    if keys.ndim == 2:
        keys = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse.ravel()


def first_of_groups(groups: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Boolean mask of the lowest-rank row of each group."""
    order = np.lexsort((rank, groups))
    first = np.ones(len(order), dtype=bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    mask = np.zeros(len(groups), dtype=bool)
    mask[order[first]] = True
    return mask


def greedy_drop(rank: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Walk rows in rank order; drop a row if it is paired with an earlier row that was kept.

    This is "keep one per duplicate group" without over-chaining: in A~B~C with A !~ C, B goes and
    C stays. Resolved in vectorised rounds: the earliest undecided row is always decidable, so it ends;
    in practice in as many rounds as the longest chain.
    """
    n = len(rank)
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 dropped
    i, j = np.asarray(i)[i != j], np.asarray(j)[i != j]  # a row is no duplicate of itself
    if len(i) == 0:
        return np.zeros(n, dtype=bool)
    swap = rank[i] > rank[j]
    a = np.where(swap, j, i)
    b = np.where(swap, i, j)
    state[np.bincount(b, minlength=n) == 0] = 1
    while len(b):
        killed = (state[a] == 1) & (state[b] == 0)
        state[b[killed]] = 2
        pending = state[b] == 0
        a, b = a[pending], b[pending]
        if not len(b):
            break
        # An undecided row whose earlier partners are all dropped is kept.
        alive_before = np.bincount(b[state[a] != 2], minlength=n)
        waiting = np.bincount(b, minlength=n) > 0
        state[waiting & (alive_before == 0)] = 1
    return state == 2


# -- Hamming neighbours (perceptual hashes) ----------------------------------------------------------


def _blocks(radius: int) -> list[tuple[int, int]]:
    """radius + 1 disjoint bit ranges of a 64-bit code: two codes within ``radius`` agree on one of them."""
    parts = radius + 1
    if parts > 64:
        raise ValueError(f"Hamming radius {radius} is above 63")
    edges = np.linspace(0, 64, parts + 1).round().astype(int).tolist()
    return [(lo, hi - lo) for lo, hi in itertools.pairwise(edges)]


def hamming_join(queries: np.ndarray, index: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, index row) with ``popcount(q ^ x) <= radius`` (multi-index hashing).

    Cost is the number of rows sharing a block with a query, not N * M. Best for small radii; a radius of
    r splits the code into r + 1 blocks of 64 / (r + 1) bits.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    index = np.ascontiguousarray(index, dtype=np.uint64)
    found_q: list[np.ndarray] = []
    found_x: list[np.ndarray] = []
    if len(queries) == 0 or len(index) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    for shift, width in _blocks(radius):
        mask = np.uint64((1 << width) - 1)
        qk = (queries >> np.uint64(shift)) & mask
        xk = (index >> np.uint64(shift)) & mask
        order = np.argsort(xk, kind="stable")
        sorted_keys = xk[order]
        lo = np.searchsorted(sorted_keys, qk, side="left")
        hi = np.searchsorted(sorted_keys, qk, side="right")
        counts = hi - lo
        for q, pos in _expand(lo, counts):
            x = order[pos]
            close = np.bitwise_count(queries[q] ^ index[x]) <= radius
            found_q.append(q[close])
            found_x.append(x[close])
    q = np.concatenate(found_q)
    x = np.concatenate(found_x)
    if len(q) == 0:
        return q.astype(np.int64), x.astype(np.int64)
    packed = np.unique(q.astype(np.int64) * len(index) + x)
    return packed // len(index), packed % len(index)


def _expand(lo: np.ndarray, counts: np.ndarray, chunk: int = 4_000_000):
    """Yield (query ids, index positions) for every position in [lo, lo + count), in bounded chunks."""
    total = np.cumsum(counts)
    start_q = 0
    while start_q < len(counts):
        base = total[start_q - 1] if start_q else 0
        end_q = int(np.searchsorted(total, base + chunk, side="right"))
        end_q = max(end_q, start_q + 1)
        c = counts[start_q:end_q]
        n = int(c.sum())
        if n:
            q = np.repeat(np.arange(start_q, end_q), c)
            offsets = np.arange(n) - np.repeat(np.cumsum(c) - c, c)
            yield q, lo[q] + offsets
        start_q = end_q


def hamming_pairs(codes: np.ndarray, radius: int, mirrored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows whose codes are within ``radius``; with ``mirrored`` (the codes of the
    flipped images) a row also matches the flipped version of another."""
    queries = codes if mirrored is None else np.concatenate([codes, mirrored])
    q, x = hamming_join(queries, codes, radius)
    q = q % len(codes)
    keep = q != x
    i, j = np.minimum(q[keep], x[keep]), np.maximum(q[keep], x[keep])
    packed = np.unique(i * len(codes) + j)
    return packed // len(codes), packed % len(codes)


# -- neighbours in a vector space (SemDeDup) ----------------------------------------------------------


@dataclass
class ClusterStats:
    clusters: int = 0
    largest_cluster: int = 0
    pairs: int = 0
    guests: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def default_clusters(n: int) -> int:
    """sqrt(n / 2) clusters: assigning costs ~2 n k d flops and the pairs ~n (n / k) d, equal there."""
    return max(1, round((n / 2) ** 0.5))


def normalised_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows and a validity mask (finite, non-zero norm); invalid rows become zeros."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    x = np.where(finite[:, None], x, 0.0)
    norms = np.linalg.norm(x, axis=1)
    valid = finite & (norms > 0)
    x = x / np.where(valid, norms, 1.0)[:, None]
    return x, valid


def train_kmeans(
    vectors: Any, rows: np.ndarray, k: int, niter: int, seed: int, sample: int, spherical: bool
) -> np.ndarray:
    """k-means (faiss) on at most ``sample`` of ``rows`` (chosen from ``rows``' order with ``seed``)."""
    import faiss

    rng = np.random.default_rng(seed)
    # Keep the given order (rank order), so the same rows give the same centroids whatever the pool order.
    pick = rows if len(rows) <= sample else rows[np.sort(rng.choice(len(rows), size=sample, replace=False))]
    train = np.empty((len(pick), vectors.shape[1]), dtype=np.float32)
    for s in range(0, len(pick), 65536):
        chunk = np.asarray(vectors[pick[s : s + 65536]], np.float32)
        train[s : s + len(chunk)] = normalised_rows(chunk)[0] if spherical else chunk
    k = max(1, min(k, len(pick) // 39))  # faiss wants >= 39 points per centroid
    # The sample is already drawn: stop faiss from subsampling it again (in an order we do not control).
    km = faiss.Kmeans(train.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      max_points_per_centroid=len(pick) // k + 1)  # fmt: skip
    km.train(train)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(
    vectors: Any, centroids: np.ndarray, spherical: bool, probes: int = 1, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """The ``probes`` nearest centroids per row, with the similarity (cosine) or squared distance to each."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1]) if spherical else faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    probes = min(probes, len(centroids))
    n = len(vectors)
    labels = np.empty((n, probes), dtype=np.int64)
    scores = np.empty((n, probes), dtype=np.float32)
    for s in range(0, n, chunk):
        x = np.asarray(vectors[s : s + chunk], dtype=np.float32)
        if spherical:
            x = normalised_rows(x)[0]
        scores[s : s + chunk], labels[s : s + chunk] = index.search(np.ascontiguousarray(x), probes)
    return labels, scores


def clustered_pairs(
    vectors: Any,
    threshold: float,
    *,
    metric: str = "cosine",
    valid: np.ndarray | None = None,
    rank: np.ndarray | None = None,
    n_clusters: int | None = None,
    margin: float = 0.0,
    niter: int = 10,
    seed: int = 0,
    train_sample: int | None = None,
    workers: int | None = None,
    block: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, ClusterStats]:
    """Pairs of rows (i < j) closer than ``threshold`` that share a k-means cluster.

    ``metric="cosine"``: cosine similarity > threshold (spherical k-means on unit rows), SemDeDup's test.
    ``metric="rms"``: root-mean-square coordinate difference <= threshold (plain k-means).
    A row near a cluster boundary (second-nearest centroid within ``margin`` of the nearest: cosine
    units, or RMS units for "rms") is also compared with the members of that second cluster, which
    recovers most pairs that the boundary splits. ``vectors`` may be a memory map: rows are read per
    chunk and per cluster, so memory is one cluster's block plus a few arrays of N, whatever N.
    Clusters run in a thread pool with single-threaded BLAS each.
    Returns (i, j, labels, centre_score, stats): nearest cluster per row (-1 when invalid) and its
    similarity (cosine) or squared distance (rms) to that centroid.
    """
    import time

    from threadpoolctl import threadpool_limits

    if metric not in ("cosine", "rms"):
        raise ValueError(f"metric {metric!r}: use 'cosine' or 'rms'")
    spherical = metric == "cosine"
    n = len(vectors)
    valid = np.ones(n, dtype=bool) if valid is None else valid
    rank = np.arange(n) if rank is None else rank
    stats = ClusterStats()
    rows = np.flatnonzero(valid)
    # k-means and every per-cluster product see rows in rank order, so the same rows give the same
    # floating-point sums (and pairs) whatever order the pool's shards came in.
    rows_by_rank = rows[np.argsort(rank[rows], kind="stable")]
    k = n_clusters or default_clusters(len(rows))
    clock = time.perf_counter()
    sample = train_sample or max(50_000, 40 * k)  # faiss wants >= 39 points per centroid
    centroids = train_kmeans(vectors, rows_by_rank, k, niter, seed, sample, spherical)
    stats.seconds["kmeans"] = time.perf_counter() - clock
    clock = time.perf_counter()
    labels2, scores2 = assign(vectors, centroids, spherical, probes=2 if margin > 0 else 1)
    labels = np.where(valid, labels2[:, 0], -1)
    centre = scores2[:, 0]
    guest = np.zeros(n, dtype=bool)
    if labels2.shape[1] > 1:
        if spherical:
            gap = scores2[:, 0] - scores2[:, 1]
        else:
            dim = vectors.shape[1]
            gap = (np.sqrt(np.maximum(scores2[:, 1], 0)) - np.sqrt(np.maximum(scores2[:, 0], 0))) / np.sqrt(dim)
        guest = valid & (gap <= margin)
    stats.guests = int(guest.sum())
    stats.seconds["assign"] = time.perf_counter() - clock

    clock = time.perf_counter()
    homes = _split_by(rows_by_rank, labels[rows_by_rank], k)
    guest_rows = rows_by_rank[guest[rows_by_rank]]
    guests = _split_by(guest_rows, labels2[guest_rows, -1], k)
    stats.clusters = sum(1 for m in homes if len(m))
    stats.largest_cluster = max((len(m) for m in homes), default=0)
    limit = threshold * threshold * vectors.shape[1]

    def rows_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(vectors[ids], dtype=np.float32)
        if spherical:
            return normalised_rows(x)[0], np.zeros(0)
        return x, np.einsum("ij,ij->i", x, x)

    def close(xa, sa, xb, sb) -> np.ndarray:
        g = xa @ xb.T
        return g > threshold if spherical else (sa[:, None] + sb[None, :] - 2 * g) <= limit

    def one(c: int) -> tuple[np.ndarray, np.ndarray]:
        home, visit = homes[c], guests[c]
        out_i, out_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        if len(home) + len(visit) < 2 or len(home) == 0:
            return out_i[0], out_j[0]
        x, sq = rows_of(home)
        for s in range(0, len(x), block):
            # upper triangle only: rows s.. of the block against columns s..
            a, b = np.nonzero(close(x[s : s + block], sq[s : s + block], x[s:], sq[s:]))
            a, b = a + s, b + s
            upper = a < b
            out_i.append(home[a[upper]])
            out_j.append(home[b[upper]])
        for s in range(0, len(visit), block):
            ids = visit[s : s + block]
            xv, sv = rows_of(ids)
            a, b = np.nonzero(close(xv, sv, x, sq))
            out_i.append(ids[a])
            out_j.append(home[b])
        i, j = np.concatenate(out_i), np.concatenate(out_j)
        return np.minimum(i, j), np.maximum(i, j)

    workers = workers or min(4, os.cpu_count() or 1)
    big_first = sorted(range(k), key=lambda c: len(homes[c]) + len(guests[c]), reverse=True)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, big_first))
    i = np.concatenate([np.zeros(0, np.int64), *(r[0] for r in results)])
    j = np.concatenate([np.zeros(0, np.int64), *(r[1] for r in results)])
    if stats.guests and len(i):  # a pair can be found from both sides of a boundary
        packed = np.unique(i * n + j)
        i, j = packed // n, packed % n
    stats.pairs = len(i)
    stats.seconds["pairs"] = time.perf_counter() - clock
    return i, j, labels, centre, stats


def _split_by(rows: np.ndarray, labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Rows grouped by label (0..k-1), each group keeping the given order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [rows[order[bounds[c] : bounds[c + 1]]] for c in range(k)]
