from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, SelectContext, register_filter, uid_random

from ._concepts import ConceptFilter, concept_counts, named_counts


@register_filter("metaclip_balance")
@dataclass
class MetaclipBalance(ConceptFilter):
    """MetaCLIP's balancing: cap every concept at about ``t`` samples, keep the tail whole.

    Counts are taken over this step's candidates. A sample naming concepts E is kept with probability
    ``1 - prod_e (1 - t / max(count_e, t))``: a sample of a rare concept (count <= t) always stays, a
    head concept keeps ~t of its samples. The draw is one number per (uid, seed), so the subset does not
    depend on shard order. Samples with no concept are dropped (``no_concept``), as MetaCLIP does.
    MetaCLIP used t = 20,000 for 400M pairs; scale t with the pool.
    """

    t: int = 20_000

    def __post_init__(self) -> None:
        self._check_concepts()
        if int(self.t) < 1:
            raise ConfigError(f"metaclip_balance: t={self.t} must be a positive count")

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        matrix, status, names = self.concepts(values, uids)
        has = status == 0
        counts = concept_counts(matrix, np.flatnonzero(has), len(names))
        cap = np.float64(self.t) / np.maximum(counts, self.t)  # per concept: chance to be kept by it
        miss = np.where(matrix >= 0, 1.0 - cap[np.maximum(matrix, 0)], 1.0)
        keep_probability = 1.0 - miss.prod(axis=1)
        kept = has & (uid_random(uids, ctx.seed) < keep_probability)
        after = concept_counts(matrix, np.flatnonzero(kept), len(names))
        decision = Decision.from_reasons(
            {"invalid_embedding": status == 1, "no_concept": status == 2, "over_concept_cap": has & ~kept},
            len(values),
        )
        decision.notes = {"t": int(self.t), "concept_counts_before": named_counts(counts, names),
                          "concept_counts_after": named_counts(after, names)}  # fmt: skip
        return decision
