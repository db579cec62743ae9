from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter


@register_filter("no_filter")
@dataclass
class NoFilter(Filter):
    """Keep the whole pool: DataComp's reference point."""

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        return Decision.from_mask(np.ones(len(uids), dtype=bool), "")
