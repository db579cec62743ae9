"""Built-in filtering strategies, one module each; importing this package registers them by name."""

from . import (  # noqa: F401
    basic,
    clip_score,
    concept_match,
    diversity_balance,
    eval_decontam,
    exact_dedup,
    image_based,
    metaclip_balance,
    no_filter,
    perceptual_dedup,
    random_subset,
    semantic_dedup,
)
