"""Built-in filtering strategies, one module each; importing this package registers them by name."""

from . import basic, clip_score, concept_match, no_filter, random_subset  # noqa: F401
