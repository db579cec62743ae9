from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import (
    Decision,
    Filter,
    SelectContext,
    from_source,
    register_filter,
    uid_random,
)
from siftbench.benchmark.core.sampling import concept_keep_rate, systematic_counts
from siftbench.benchmark.core.uids import hex_to_uids


@register_filter("oracle")
@dataclass
class Oracle(Filter):
    """Reference only, never a strategy: the embedded world's clean pairs, read from its ground truth.

    Every planted defect goes (duplicates and eval copies too; a duplicate's source is clean, so one member
    of each group stays). With ``resample_t`` the clean pairs are drawn as clip_resample draws its
    candidates: MetaCLIP's keep probability t / max(count, t) with each pair's true object (its shape, or
    "digit") as its concept, then systematic sampling to ``pool_fraction`` of the pool (default: as many
    rows as there are clean pairs), with repeats. t = 1 gives every object the same share of the draws.
    ``ground_truth`` is the world's ground_truth.parquet; the world fills it in, a real pool has none.
    """

    resample_t: float | None = None
    pool_fraction: float | None = None
    ground_truth: str | None = from_source("ground_truth")

    def __post_init__(self) -> None:
        if not self.ground_truth:
            raise ConfigError("oracle: ground_truth is not set; the oracle needs the embedded world's ground truth "
                              "(siftbench run fills it in on the world; a real pool has none)")  # fmt: skip
        if not Path(self.ground_truth).is_file():
            raise ConfigError(f"oracle: ground_truth {self.ground_truth} is not a file; generate the world first")
        if self.resample_t is not None and not float(self.resample_t) >= 1:
            raise ConfigError(f"oracle: resample_t={self.resample_t} must be a count >= 1 (or null: each clean pair once)")
        if self.pool_fraction is not None:
            if self.resample_t is None:
                raise ConfigError("oracle: pool_fraction draws with repeats, so it needs resample_t= too")
            if not 0.0 < float(self.pool_fraction) <= 1.0:
                raise ConfigError(f"oracle: pool_fraction={self.pool_fraction} must be in (0, 1]")

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        truth = pq.read_table(self.ground_truth, columns=["uid", "defect", "kind", "shape"]).to_pandas()
        row = _rows_of(hex_to_uids(truth["uid"].to_numpy()), uids, self.ground_truth)
        truth = truth.iloc[row]  # the candidates' rows
        defect = truth["defect"].to_numpy(dtype=str)
        clean = defect == "clean"
        reasons = {str(name): defect == name for name in sorted(set(defect) - {"clean"})}
        if self.resample_t is None:
            decision = Decision.from_reasons(reasons, len(uids))
            decision.notes = {"clean_pairs": int(clean.sum())}
            return decision
        # The clean candidates in the ground truth's row order: the draw itself depends only on uids and the
        # seed, but the keep rates are summed in this order, and a last-bit difference could move a repeat.
        drawn = np.flatnonzero(clean)
        drawn = drawn[np.argsort(row[drawn], kind="stable")]
        objects = truth["shape"].where(truth["kind"] == "shape", truth["kind"]).to_numpy(dtype=str)[drawn]
        names, concept = np.unique(objects, return_inverse=True)
        counts = np.bincount(concept, minlength=len(names)).astype(np.float64)
        size = len(drawn) if self.pool_fraction is None else max(1, int(ctx.pool_size * float(self.pool_fraction)))
        repeats = np.zeros(len(uids), dtype=np.int64)
        repeats[drawn] = systematic_counts(concept_keep_rate(counts, float(self.resample_t))[concept], size,
                                           uid_random(uids[drawn], ctx.seed), ctx.seed)  # fmt: skip
        decision = Decision.from_reasons({**reasons, "not_drawn": clean & (repeats == 0)}, len(uids))
        decision.repeats = repeats
        decision.notes = {"clean_pairs": int(clean.sum()), "rows": int(repeats.sum()),
                          "max_repeats": int(repeats.max(initial=0)),
                          "object_counts": {str(n): int(c) for n, c in zip(names, counts, strict=True)}}  # fmt: skip
        return decision


def _rows_of(truth_uids: np.ndarray, uids: np.ndarray, path: str) -> np.ndarray:
    """For each candidate uid, its row in the ground truth."""
    void = np.dtype((np.void, 16))
    keys = np.ascontiguousarray(truth_uids).view(void).ravel()
    order = np.argsort(keys, kind="stable")
    wanted = np.ascontiguousarray(uids).view(void).ravel()
    pos = np.minimum(np.searchsorted(keys[order], wanted), max(len(keys) - 1, 0))
    found = keys[order][pos] == wanted if len(keys) else np.zeros(len(uids), dtype=bool)
    if not found.all():
        raise ConfigError(f"oracle: {int((~found).sum())} pool uids are not in {path}; it is another world's ground "
                          "truth")  # fmt: skip
    return order[pos]
