"""Where pool stages run. A stage maps a picklable function over shard names through an Executor,
so the same stage runs in this process, in local worker processes, or (later) on Ray."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tqdm import tqdm

from .core.errors import ConfigError
from .core.registry import Registry

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "") -> list[R]:
        """Apply ``fn`` to every item; results come back in the order of ``items``."""
        ...


EXECUTORS: Registry[type] = Registry("executor")


@EXECUTORS.register("local")
@dataclass
class LocalExecutor:
    """Local worker processes (forked); ``workers=1`` runs in this process, which is easiest to debug."""

    workers: int = 1
    progress: bool = True

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "") -> list[R]:
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            return [fn(item) for item in tqdm(items, desc=desc, disable=not self.progress, leave=False)]
        import multiprocessing

        results: list[R | None] = [None] * len(items)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=context) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for future in tqdm(as_completed(futures), total=len(items), desc=desc, disable=not self.progress, leave=False):
                results[futures[future]] = future.result()
        return results  # type: ignore[return-value]


def make_executor(cfg: dict | None) -> Executor:
    cfg = dict(cfg or {"name": "local"})
    name = cfg.pop("name", "local")
    try:
        return EXECUTORS.get(name)(**cfg)
    except TypeError as e:
        raise ConfigError(f"executor {name!r}: {e}") from None
