from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter, uid_random


@register_filter("random")
@dataclass
class RandomSubset(Filter):
    """A uniform subset of the candidates: shows how much of a filter's gain is just 'fewer samples'."""

    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"random: fraction={self.fraction} must be in (0, 1]")

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        # Rank by a per-uid hash of the seed, so the subset depends on neither shard order nor worker count.
        draw = uid_random(uids, ctx.seed)
        keep = np.zeros(len(uids), dtype=bool)
        keep[np.argsort(draw, kind="stable")[: int(len(uids) * self.fraction)]] = True
        return Decision.from_mask(keep, "random_drop")
