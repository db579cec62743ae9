from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.pool import ShardBatch


@register_filter("concept_match")
@dataclass
class ConceptMatch(Filter):
    """Keep pairs whose caption names at least one concept of a vocabulary (as DataComp's text-based
    filter keeps captions naming an ImageNet class). Matching is MetaCLIP's: lower-cased, space-padded
    substring search with Aho-Corasick, so "cat" matches "a cat." but not "concatenate"."""

    vocabulary: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        entries = [str(v).strip().lower() for v in self.vocabulary]
        if not entries:
            raise ConfigError("concept_match: vocabulary is empty; list concepts in filter.vocabulary")
        empty = [i for i, e in enumerate(entries) if not e]
        if empty:
            raise ConfigError(f"concept_match: vocabulary entries {empty} are empty strings; remove them")
        dupes = sorted({e for e in entries if entries.count(e) > 1})
        if dupes:
            raise ConfigError(f"concept_match: vocabulary has duplicates {dupes}; list each concept once")

    @cached_property
    def _automaton(self):
        import ahocorasick

        automaton = ahocorasick.Automaton()
        for i, entry in enumerate(self.vocabulary):
            automaton.add_word(f" {entry.strip().lower()} ", i)
        automaton.make_automaton()
        return automaton

    def columns(self) -> tuple[str, ...]:
        return ("text",)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        matches = [self.match(str(t)) for t in batch.table["text"].fillna("")]
        return pd.DataFrame({"concepts": [len(m) for m in matches], "first_concept": [m[0] if m else -1 for m in matches]})

    def match(self, text: str) -> list[int]:
        """Vocabulary indices named in ``text`` (each once, in order of first appearance)."""
        padded = " " + " ".join(_strip_punctuation(text.lower()).split()) + " "
        seen: dict[int, None] = {}
        for _, index in self._automaton.iter(padded):
            seen.setdefault(index, None)
        return list(seen)

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        return Decision.from_mask(values["concepts"].to_numpy() > 0, "no_concept_in_caption")


_TABLE = str.maketrans({c: " " for c in ".,;:!?\"'()[]{}<>/\\|#*"})


def _strip_punctuation(text: str) -> str:
    return text.translate(_TABLE)
