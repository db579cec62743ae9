"""Built-in filtering strategies, one module each; importing this package registers them by name."""

from . import (  # noqa: F401
    basic,
    clip_score,
    concept_match,
    exact_dedup,
    no_filter,
    perceptual_dedup,
    random_subset,
    semantic_dedup,
)
