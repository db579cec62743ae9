"""One small registry for everything chosen by name: filters, eval tasks, executors.

Names come from configs (never import paths from user configs). Third-party packages add filters
through the ``siftbench.filters`` entry-point group, so a filter can live outside this repo.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by a decorator, by lazy ``"module:attr"`` targets, or by entry points."""

    def __init__(self, kind: str, entry_point_group: str | None = None, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T | str) -> None:
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise ConfigError(f"{self.kind} {name!r} is registered twice ({_describe(existing)} and {_describe(obj)})")
        self._items[name] = obj

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")
        item = self._items[name]
        if isinstance(item, str):  # lazy "module:attr" target, imported on first use
            module, _, attr = item.partition(":")
            item = getattr(importlib.import_module(module), attr)
            self._items[name] = item
        return item

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def imported(self) -> list[str]:
        """The names whose object is already imported (built-ins, decorated classes); lazy targets such as
        entry points are left out, so listing these never imports a third-party package."""
        self._load()
        return sorted(k for k, v in self._items.items() if not isinstance(v, str))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        if self._entry_point_group:
            for ep in entry_points(group=self._entry_point_group):
                if ep.name not in self._items:
                    self._items[ep.name] = ep.value


def _describe(obj: object) -> str:
    return obj if isinstance(obj, str) else f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
