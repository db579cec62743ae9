"""The leaderboard: validated submissions in a SQLite store, seed-aware rankings, a static web page.

Plain functions for the ``siftbench`` CLI and for scripts; none of them imports torch. They load on first
use, so adding the leaderboard's commands to a parser costs no numpy or pyarrow import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SubmissionRefused": "validate",
    "SubmitResult": "submission",
    "add_leaderboard_commands": "cli",
    "build_site": "site",
    "serve": "site",
    "show": "tables",
    "submit": "submission",
    "submit_groups": "submission",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
