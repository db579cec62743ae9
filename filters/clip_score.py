from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.pool import ShardBatch
from siftbench.benchmark.core.selection import (
    check_threshold_or_fraction,
    keep_at_least,
    top_fraction_threshold,
)


@register_filter("clip_score")
@dataclass
class ClipScore(Filter):
    """Keep pairs whose image-text similarity is high: ``score >= threshold``, or the global top fraction.

    ``column`` is a pool column (DataComp's ``clip_b32_similarity_score``) or one that ``siftbench embed``
    added (``clip_<model>_similarity_score``). The top fraction uses ONE threshold over the whole pool,
    as DataComp does, never one per shard.
    """

    column: str = "clip_b32_similarity_score"
    threshold: float | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        check_threshold_or_fraction("clip_score", self.threshold, self.fraction)

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        return pd.DataFrame({"clip_score": batch.table[self.column].to_numpy(dtype=np.float32)})

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        scores = values["clip_score"].to_numpy()
        nan = np.isnan(scores)
        if nan.all() and len(scores):
            raise ConfigError(f"clip_score: every value of {self.column!r} is NaN; recompute the scores")
        # NaN scores cannot be ranked: dropped and counted, never silently kept.
        valid = scores[~nan]
        thr = self.threshold if self.threshold is not None else top_fraction_threshold(valid, self.fraction)
        keep = keep_at_least(np.where(nan, -np.inf, scores), thr)
        return Decision.from_reasons({"nan_score": nan, "below_threshold": ~keep}, len(scores))
