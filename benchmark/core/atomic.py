"""Atomic writes: a stage's output appears whole or not at all, so a crash loses only the file in flight.

The file is written under a temporary sibling name, ``.NAME.tmp-HOST-PID``, and renamed into place. The
name says who writes it, so a leftover of a killed writer can be told from a live writer's file
(``temporary_writer``; ``core.stage`` removes only the former).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TMP = ".tmp-"
HOST = socket.gethostname()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP}{HOST}-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def temporary_writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the writer of an ``atomic_path`` temporary named ``name``; None for any other name.

    Names without a host (``.NAME.tmp-PID``, as siftbench wrote them before) count as this host's.
    """
    if not name.startswith(".") or _TMP not in name:
        return None
    writer = name.rsplit(_TMP, 1)[1]
    host, _, pid = writer.rpartition("-")
    if not pid.isdigit():
        return None
    return (host or HOST), int(pid)


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=jsonable) + "\n")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars and paths show up in stats; anything else is a bug."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
