from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.pool import ShardBatch

from .common.concepts import ConceptMatcher


@register_filter("concept_match")
@dataclass
class ConceptMatch(Filter):
    """Keep pairs whose caption names at least one concept of a vocabulary (as DataComp's text-based
    filter keeps captions naming an ImageNet class). Matching is MetaCLIP's: lower-cased, space-padded
    substring search with Aho-Corasick, so "cat" matches "a cat." but not "concatenate"."""

    vocabulary: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._matcher  # noqa: B018 -- validate the vocabulary when the filter is built, not mid-run

    @cached_property
    def _matcher(self) -> ConceptMatcher:
        return ConceptMatcher(self.vocabulary, who="concept_match")

    def columns(self) -> tuple[str, ...]:
        return ("text",)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        rows, concepts = self._matcher.match(batch.table["text"].to_numpy())
        counts = np.bincount(rows, minlength=len(batch))
        first = np.full(len(batch), -1, dtype=np.int64)
        first[rows[::-1]] = concepts[::-1]  # rows ascending, concepts in order of appearance: keep the first
        return pd.DataFrame({"concepts": counts, "first_concept": first})

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        return Decision.from_mask(values["concepts"].to_numpy() > 0, "no_concept_in_caption")
