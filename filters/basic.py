from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.filtering import (
    Decision,
    Filter,
    SelectContext,
    numeric_column,
    register_filter,
)
from siftbench.benchmark.core.pool import ShardBatch
from siftbench.benchmark.core.selection import unrankable

from .common.language import detect_languages


@register_filter("basic")
@dataclass
class Basic(Filter):
    """DataComp's basic filter: English captions of more than 2 words and 5 characters, images at least
    200 px on the short side with aspect ratio at most 3 (sizes from metadata, before any resize).
    A missing (NaN) or infinite size fails DataComp's comparisons, so the pair is dropped, and counted."""

    language: str = "en"
    min_words: int = 3
    min_chars: int = 6
    min_side: int = 200
    max_aspect: float = 3.0

    def columns(self) -> tuple[str, ...]:
        return ("text", "original_width", "original_height")

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        text = batch.table["text"].fillna("").astype(str)
        w = numeric_column(batch, "original_width", self.name)
        h = numeric_column(batch, "original_height", self.name)
        return pd.DataFrame(
            {
                "language": detect_languages(text.tolist()),
                "words": text.str.split().str.len().to_numpy(),
                "chars": text.str.len().to_numpy(),
                "min_side": np.minimum(w, h),
                "aspect": np.maximum(w, h) / np.maximum(np.minimum(w, h), 1),
            }
        )

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        # NaN propagates through min and max; an infinite side makes one of the two infinite.
        sizes = values["min_side"].to_numpy() + values["aspect"].to_numpy()
        return Decision.from_reasons(
            {
                "not_" + self.language: values["language"].to_numpy() != self.language,
                "caption_too_short": (values["words"].to_numpy() < self.min_words)
                | (values["chars"].to_numpy() < self.min_chars),
                **unrankable(sizes, "size"),
                "image_too_small": values["min_side"].to_numpy() < self.min_side,
                "extreme_aspect_ratio": values["aspect"].to_numpy() > self.max_aspect,
            },
            len(values),
        )
