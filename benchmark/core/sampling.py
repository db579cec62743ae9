"""Sampling rules shared by the balancing filters and the oracle: MetaCLIP's per-concept keep rate and
systematic sampling with repeats. Both depend only on their inputs and the seed, never on row order."""

from __future__ import annotations

import numpy as np


def concept_keep_rate(counts: np.ndarray, t: float) -> np.ndarray:
    """MetaCLIP's rule per concept: the chance a sample is kept by a concept seen ``counts`` times, cap ``t``."""
    return t / np.maximum(counts, t)


def systematic_counts(weight: np.ndarray, size: int, draw: np.ndarray, seed: int) -> np.ndarray:
    """How many of ``size`` systematic draws fall on each row, rows weighted by ``weight``.

    Rows are laid end to end in ``draw`` order (per uid and seed, so shard order cannot matter), each
    as long as its share ``size * weight / sum(weight)``, and the draws are the points ``u + k`` for
    k = 0..size-1 with one offset u from the seed: a row gets the floor or the ceiling of its share.
    """
    counts = np.zeros(len(weight), dtype=np.int64)
    total = float(weight.sum())
    if size <= 0 or total <= 0:
        return counts
    order = np.argsort(draw, kind="stable")
    edges = np.cumsum(weight[order] * (size / total))
    edges[-1] = size  # no rounding drift at the end: exactly `size` points fall inside
    offset = float(np.random.default_rng([seed, 0x5EED]).random())
    before = np.ceil(np.concatenate([[0.0], edges]) - offset).clip(min=0)  # points below each edge
    counts[order] = np.diff(before).astype(np.int64)
    return counts
