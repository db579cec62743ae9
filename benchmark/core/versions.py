"""Which versions made a result: the installed packages', read from their metadata."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str | None:
    """The installed version of ``name``; None when it is not installed (or has no metadata)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Python's version and each package's (None for a missing one)."""
    return {"python": platform.python_version(), **{n: package_version(n) for n in names}}
