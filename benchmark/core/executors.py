"""Where pool stages run. A stage maps a picklable function over shard names through an Executor,
so the same stage runs in this process, in local worker processes, or on a Ray cluster."""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.progress import progress_bar
from siftbench.benchmark.core.registry import Registry

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


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
            return [fn(item) for item in progress_bar(items, enabled=self.progress, desc=desc, leave=False)]

        results: list[R | None] = [None] * len(items)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=context) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for future in progress_bar(as_completed(futures), enabled=self.progress, total=len(items), desc=desc, leave=False):
                results[futures[future]] = future.result()
        return results  # type: ignore[return-value]


@EXECUTORS.register("ray")
@dataclass
class RayExecutor:
    """Ray tasks, one per shard; stateful work (a model to load once) runs on a pool of Ray actors.

    ``address``: None starts a private local instance (``num_cpus``/``num_gpus`` size it); ``"auto"``
    joins the cluster that ``ray start`` made on this machine; ``"ray://head:10001"`` connects a client.
    If Ray is already initialised in this process (a test, a notebook), that instance is used as it is.
    Every node must have siftbench installed and see the pool at the same path (a shared filesystem).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    cpus_per_task: float = 1.0
    actors: int | None = None          # stateful workers (embed); None: one per GPU, or one per cpus_per_actor
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    progress: bool = True

    def _ray(self) -> Any:
        try:
            import ray  # heavy, optional (siftbench[ray])
        except ImportError:
            raise ConfigError("executor=ray needs Ray: pip install 'siftbench[ray]'") from None
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        return ray

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "") -> list[R]:
        items = list(items)
        if not items:
            return []
        ray = self._ray()
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=2)(_apply)
        fn_ref = ray.put(fn)  # shipped once, not once per shard
        return self._gather(ray, [task.remote(fn_ref, item) for item in items], desc)

    def map_with_state(self, setup: Callable[[], S], fn: Callable[[S, T], R], items: Sequence[T],
                       desc: str = "") -> list[R]:
        """``fn(state, item)`` on actors that each build ``state = setup()`` once (e.g. load a model on
        their GPU); results in the order of ``items``."""
        items = list(items)
        if not items:
            return []
        ray = self._ray()
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        count = self.actors or self._default_actors(ray, gpus)
        actor_cls = ray.remote(num_cpus=self.cpus_per_actor, num_gpus=gpus)(_StatefulWorker)
        setup_ref, fn_ref = ray.put(setup), ray.put(fn)
        workers = [actor_cls.remote(setup_ref, fn_ref) for _ in range(max(1, min(count, len(items))))]
        try:
            # Round-robin: each actor's calls run in order, and every actor starts with work.
            refs = [workers[i % len(workers)].run.remote(item) for i, item in enumerate(items)]
            return self._gather(ray, refs, desc)
        finally:
            for worker in workers:
                ray.kill(worker)

    def _default_actors(self, ray: Any, gpus: float) -> int:
        resources = ray.cluster_resources()
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_actor))

    def _gather(self, ray: Any, refs: list[Any], desc: str) -> list[Any]:
        pending = list(refs)
        with progress_bar(enabled=self.progress, total=len(refs), desc=desc, leave=False) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
                # Fail fast. Ray re-raises a task's error as a subclass of its own type, so a PoolError
                # raised on a node is still a PoolError (and a clean CLI message) here.
                ray.get(done)
        return ray.get(refs)


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


class _StatefulWorker:
    def __init__(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any]):
        self.state, self.fn = setup(), fn

    def run(self, item: Any) -> Any:
        return self.fn(self.state, item)


def map_with_state(executor: Executor, setup: Callable[[], S], fn: Callable[[S, T], R], items: Sequence[T],
                   desc: str = "") -> list[R]:
    """``fn(setup(), item)`` for every item, building the state once per worker: on Ray's actors when the
    executor has them, else once per worker process (``setup`` must then be hashable, or the bound
    method of a hashable object such as a frozen dataclass)."""
    stateful = getattr(executor, "map_with_state", None)
    if stateful is not None:
        return stateful(setup, fn, items, desc=desc)

    return executor.map(partial(_with_cached_state, setup, fn), items, desc=desc)


_STATES: dict[Any, Any] = {}


def _with_cached_state(setup: Callable[[], S], fn: Callable[[S, T], R], item: T) -> R:
    # A bound method arrives as a new object in every task: key it by its (comparable) owner instead.
    owner = getattr(setup, "__self__", None)
    key = (owner, setup.__func__) if owner is not None else setup  # type: ignore[attr-defined]
    if key not in _STATES:
        _STATES[key] = setup()
    return fn(_STATES[key], item)


def make_executor(cfg: dict | None) -> Executor:
    """The executor a config names (``executor=ray executor.num_cpus=4``), its fields type-checked."""
    cfg = dict(cfg or {"name": "local"})
    name = cfg.pop("name", "local")
    cls = EXECUTORS.get(name)
    if dataclasses.is_dataclass(cls):
        cfg = _checked_fields(name, cls, cfg)
    try:
        return cls(**cfg)
    except TypeError as e:
        raise ConfigError(f"executor {name!r}: {e}") from None


def _checked_fields(name: str, cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` converted to the dataclass's field types by OmegaConf's rules, or a ConfigError naming the field:
    ``executor.workers=abc`` would otherwise fail deep inside a stage."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise ConfigError(f"executor {name!r}: unknown parameter(s) {unknown}; it takes {sorted(fields)}")
    schema = OmegaConf.structured(cls)
    for key, value in cfg.items():
        try:
            OmegaConf.merge(schema, {key: value})
        except OmegaConfBaseException:
            raise ConfigError(f"executor {name!r}: {key}={value!r} has type {type(value).__name__}, expected "
                              f"{fields[key]}") from None
    return OmegaConf.to_container(OmegaConf.merge(schema, cfg))  # type: ignore[return-value]
