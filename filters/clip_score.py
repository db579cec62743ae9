from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import (
    Decision,
    Filter,
    SelectContext,
    numeric_column,
    register_filter,
)
from siftbench.benchmark.core.pool import ShardBatch
from siftbench.benchmark.core.selection import (
    check_threshold_or_fraction,
    keep_at_least,
    top_fraction_threshold,
    unrankable,
)


@register_filter("clip_score")
@dataclass
class ClipScore(Filter):
    """Keep pairs whose image-text similarity is high: ``score >= threshold``, or the global top fraction.

    ``column`` is a pool column (DataComp's ``clip_b32_similarity_score``) or one that ``siftbench embed``
    added (``clip_<model>_similarity_score``). The top fraction uses ONE threshold over the whole pool,
    as DataComp does, never one per shard. Give a threshold or a fraction: setting one in a config
    replaces the default of the other (``alternatives``).
    """

    alternatives = (("threshold", "fraction"),)

    column: str = "clip_b32_similarity_score"
    threshold: float | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        check_threshold_or_fraction("clip_score", self.threshold, self.fraction)

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        scores = numeric_column(batch, self.column, self.name, choose="filter.column")
        return pd.DataFrame({"clip_score": scores.astype(np.float32)})

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        scores = values["clip_score"].to_numpy()
        # NaN and infinite scores cannot be ranked: dropped and counted, never silently kept or ranked.
        dropped = unrankable(scores, "score")
        ranked = ~(dropped["nan_score"] | dropped["infinite_score"])
        if len(scores) and not ranked.any():
            raise ConfigError(f"clip_score: every value of {self.column!r} is NaN or infinite; recompute the scores")
        thr = self.threshold if self.threshold is not None else top_fraction_threshold(scores[ranked], self.fraction)
        keep = ranked & keep_at_least(scores, thr)
        return Decision.from_reasons({**dropped, "below_threshold": ~keep}, len(scores))
