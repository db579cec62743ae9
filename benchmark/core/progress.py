"""Progress bars that belong on a terminal: piped or logged output gets no bar lines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar shown only when stderr is a terminal (tqdm's ``disable=None``); ``enabled=False`` hides it
    everywhere."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
