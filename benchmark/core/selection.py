"""Selection rules shared by filters: thresholds and global top fractions, exactly as DataComp defines them.

Only finite values can be ranked: a NaN compares false with everything and an infinity outranks every
score, so a filter drops them first, each under its own counted reason (``unrankable``), and the rules
below refuse them.
"""

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


def unrankable(values: np.ndarray, what: str) -> dict[str, np.ndarray]:
    """Drop reasons for the values no rule can rank: ``nan_<what>`` and ``infinite_<what>`` (+inf or -inf)."""
    values = np.asarray(values, dtype=np.float64)
    return {f"nan_{what}": np.isnan(values), f"infinite_{what}": np.isinf(values)}


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """DataComp's rule: one global threshold ``sorted_desc[int(N * fraction)]``; keep ``score >= thr``."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite; drop them before "
                         "selecting (unrankable)")
    n = len(scores)
    if n == 0:
        return float("inf")
    k = min(int(n * fraction), n - 1)
    # The k-th largest without sorting everything: partition is O(N).
    return float(np.partition(scores, n - 1 - k)[n - 1 - k])


def keep_at_least(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(scores) >= threshold
