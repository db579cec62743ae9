"""Selection rules shared by filters: thresholds and global top fractions, exactly as DataComp defines them."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def check_threshold_or_fraction(who: str, threshold: float | None, fraction: float | None) -> None:
    if (threshold is None) == (fraction is None):
        raise ConfigError(
            f"{who}: give exactly one of threshold= or fraction= (got threshold={threshold}, fraction={fraction})"
        )
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{who}: fraction={fraction} must be in (0, 1]")


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """DataComp's rule: one global threshold ``sorted_desc[int(N * fraction)]``; keep ``score >= thr``."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN; fix or drop them before selecting")
    n = len(scores)
    if n == 0:
        return float("inf")
    k = min(int(n * fraction), n - 1)
    # The k-th largest without sorting everything: partition is O(N).
    return float(np.partition(scores, n - 1 - k)[n - 1 - k])


def keep_at_least(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(scores) >= threshold
