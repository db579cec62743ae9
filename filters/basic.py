from dataclasses import dataclass

import numpy as np
import pandas as pd

from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, register_filter
from siftbench.benchmark.core.pool import ShardBatch

from .common.language import detect_languages


@register_filter("basic")
@dataclass
class Basic(Filter):
    """DataComp's basic filter: English captions of more than 2 words and 5 characters, images at least
    200 px on the short side with aspect ratio at most 3 (sizes from metadata, before any resize)."""

    language: str = "en"
    min_words: int = 3
    min_chars: int = 6
    min_side: int = 200
    max_aspect: float = 3.0

    def columns(self) -> tuple[str, ...]:
        return ("text", "original_width", "original_height")

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        text = batch.table["text"].fillna("").astype(str)
        w = batch.table["original_width"].to_numpy(dtype=np.float64)
        h = batch.table["original_height"].to_numpy(dtype=np.float64)
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
        return Decision.from_reasons(
            {
                "not_" + self.language: values["language"].to_numpy() != self.language,
                "caption_too_short": (values["words"].to_numpy() < self.min_words)
                | (values["chars"].to_numpy() < self.min_chars),
                "image_too_small": values["min_side"].to_numpy() < self.min_side,
                "extreme_aspect_ratio": values["aspect"].to_numpy() > self.max_aspect,
            },
            len(values),
        )
