from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, SelectContext, register_filter, uid_random
from siftbench.benchmark.core.sampling import concept_keep_rate, systematic_counts

from .common.concepts import ConceptFilter, concept_counts, named_counts


@register_filter("metaclip_balance")
@dataclass
class MetaclipBalance(ConceptFilter):
    """MetaCLIP's balancing: cap every concept at about ``t`` samples, keep the tail whole.

    Counts are taken over this step's candidates. A sample naming concepts E is kept with probability
    ``1 - prod_e (1 - t / max(count_e, t))``: a sample of a rare concept (count <= t) always stays, a
    head concept keeps ~t of its samples. The draw is one number per (uid, seed), so the subset does not
    depend on shard order. Samples with no concept are dropped (``no_concept``), as MetaCLIP does.
    MetaCLIP used t = 20,000 for 400M pairs; scale t with the pool.

    ``size`` (or ``pool_fraction``, a share of the whole pool) instead of ``t``: the cap is solved for,
    so that exactly that many samples stay (the same rule at the t that keeps them; the few draws nearest
    the boundary settle ties). This is how a balanced subset is compared with another filter at equal
    subset size, e.g. after a looser CLIP-score step.

    ``resample: true`` (with ``t``) is MetaCLIP's balancing as its training uses it, where the cap is
    drawn afresh every epoch: over a fixed budget each sample is seen in proportion to its keep
    probability, so nothing is lost and the tail is seen more often. As a subset, that is a multiset of
    ``size`` rows (default: as many as the candidates, i.e. the same size as the step before) in which
    each sample appears about ``size * p / sum(p)`` times: systematic sampling over the samples in
    per-uid draw order, so every count is the floor or the ceiling of its share and the total is exact.
    It must be the last step of a sequence.
    """

    # t stays apart: resample=true takes t together with size or pool_fraction.
    alternatives = (("size", "pool_fraction"),)

    t: float | None = None
    size: int | None = None
    pool_fraction: float | None = None
    resample: bool = False

    def __post_init__(self) -> None:
        self._check_concepts()
        given = {k: v for k, v in {"t": self.t, "size": self.size, "pool_fraction": self.pool_fraction}.items() if v is not None}
        if self.resample:
            if self.t is None or len(given) > 2:
                raise ConfigError("metaclip_balance: resample=true needs t= and at most one of size= or "
                                  f"pool_fraction= (got {given or 'none'})")
        elif len(given) != 1:
            raise ConfigError(f"metaclip_balance: give exactly one of t=, size= or pool_fraction= (got {given or 'none'})")
        if self.t is not None and not float(self.t) >= 1:
            raise ConfigError(f"metaclip_balance: t={self.t} must be a positive count")
        if self.size is not None and int(self.size) < 1:
            raise ConfigError(f"metaclip_balance: size={self.size} must be a positive count")
        if self.pool_fraction is not None and not 0.0 < float(self.pool_fraction) <= 1.0:
            raise ConfigError(f"metaclip_balance: pool_fraction={self.pool_fraction} must be in (0, 1]")

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        matrix, status, names = self.concepts(values, uids)
        has = status == 0
        counts = concept_counts(matrix, np.flatnonzero(has), len(names))
        draw = uid_random(uids, ctx.seed)

        def keep_probability(t: float) -> np.ndarray:
            cap = concept_keep_rate(counts, t)
            miss = np.where(matrix >= 0, 1.0 - cap[np.maximum(matrix, 0)], 1.0)
            return np.where(has, 1.0 - miss.prod(axis=1), 0.0)

        size = self._target_size(ctx.pool_size)
        if self.resample:
            return self._resampled(keep_probability(float(self.t)), status, matrix, names, counts, draw,
                                   int(has.sum()) if size is None else size, ctx.seed)
        t = float(self.t) if size is None else self._solve_t(keep_probability, draw, size, counts)
        probability = keep_probability(t)
        kept = draw < probability
        if size is not None and kept.sum() > size:
            # Ties at the solved t: drop the kept draws nearest the boundary (largest draw / probability).
            ratio = np.where(kept, draw / np.maximum(probability, 1e-300), -np.inf)
            kept[np.argsort(-ratio, kind="stable")[: int(kept.sum()) - size]] = False
        after = concept_counts(matrix, np.flatnonzero(kept), len(names))
        decision = Decision.from_reasons(
            {"invalid_embedding": status == 1, "no_concept": status == 2, "over_concept_cap": has & ~kept},
            len(values),
        )
        decision.notes = {"t": round(t, 3), "concept_counts_before": named_counts(counts, names),
                          "concept_counts_after": named_counts(after, names)}  # fmt: skip
        return decision

    def _resampled(self, probability: np.ndarray, status: np.ndarray, matrix: np.ndarray, names: list[str],
                   counts: np.ndarray, draw: np.ndarray, size: int, seed: int) -> Decision:
        repeats = systematic_counts(probability, size, draw, seed)
        kept = repeats > 0
        rows = np.repeat(np.flatnonzero(kept), repeats[kept])
        after = concept_counts(matrix, rows, len(names))
        decision = Decision.from_reasons(
            {"invalid_embedding": status == 1, "no_concept": status == 2, "not_drawn": (status == 0) & ~kept},
            len(status),
        )
        decision.repeats = repeats
        decision.notes = {"t": float(self.t), "resample": True, "rows": int(repeats.sum()),
                          "max_repeats": int(repeats.max(initial=0)),
                          "concept_counts_before": named_counts(counts, names),
                          "concept_counts_after": named_counts(after, names)}  # fmt: skip
        return decision

    def _target_size(self, pool_size: int) -> int | None:
        if self.size is not None:
            return int(self.size)
        if self.pool_fraction is not None:
            return max(1, int(pool_size * float(self.pool_fraction)))
        return None

    @staticmethod
    def _solve_t(keep_probability, draw: np.ndarray, size: int, counts: np.ndarray) -> float:
        """The smallest cap t (to float precision) that keeps at least ``size`` samples: kept(t) grows with t."""
        lo, hi = 0.0, float(max(counts.max(initial=1), 1))
        if int((draw < keep_probability(hi)).sum()) <= size:
            return hi  # every sample with a concept fits in the budget
        for _ in range(64):
            mid = (lo + hi) / 2
            if int((draw < keep_probability(mid)).sum()) >= size:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-6 * hi:
                break
        return hi

