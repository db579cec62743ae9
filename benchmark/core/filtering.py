"""The filter contract: a per-shard map that computes values, a global reduce that decides.

A filter is a dataclass registered by name; its fields are its parameters, type-checked when a config is
built (``build_filter``). ``score`` is a pure function of one metadata shard (columns + embeddings)
returning per-row values; ``select`` runs once over the values of every row still in the running and
returns which rows to keep and why the others were dropped. Everything else (parallelism, stats, resume,
composition) lives in the pipeline, not in the filter. What only the pool's source can give (the eval
images' folder, target embeddings, the world's ground truth) a filter declares with ``from_source``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError, PoolError
from .pool import ShardBatch
from .registry import Registry

FILTERS: Registry[type[Filter]] = Registry(
    "filter", entry_point_group="siftbench.filters", builtin_modules=("siftbench.filters",)
)


def register_filter(name: str):
    """Class decorator: ``@register_filter("clip_score")`` makes the filter available by that name."""

    def decorator(cls: type[Filter]) -> type[Filter]:
        cls.name = name
        FILTERS.add(name, cls)
        return cls

    return decorator


@dataclass
class SelectContext:
    """What a global reduce may know besides the values: the seed and the pool's size."""

    seed: int
    pool_size: int


@dataclass
class Decision:
    """Per row: keep or drop, and for dropped rows the first reason that dropped it.

    ``reason`` holds small integer codes (0 = kept, i = ``reason_names[i - 1]``): a million rows of
    Python strings would cost more than the filtering itself.
    """

    keep: np.ndarray
    reason: np.ndarray
    reason_names: tuple[str, ...]
    # What a filter wants recorded beside its drop counts (concept counts, cluster sizes): JSON-able.
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Times each kept row goes into the subset (upsampling, e.g. balancing by resampling); None = once.
    repeats: np.ndarray | None = None

    @classmethod
    def from_mask(cls, keep: np.ndarray, reason: str) -> Decision:
        keep = np.asarray(keep, dtype=bool)
        return cls(keep=keep, reason=(~keep).astype(np.int8), reason_names=(reason,))

    @classmethod
    def from_reasons(cls, reasons: dict[str, np.ndarray], rows: int) -> Decision:
        """Several named drop conditions; a row dropped by more than one is counted under the first."""
        code = np.zeros(rows, dtype=np.int8)
        for i, dropped in enumerate(reasons.values(), start=1):
            code[(code == 0) & np.asarray(dropped, dtype=bool)] = i
        return cls(keep=code == 0, reason=code, reason_names=tuple(reasons))

    def dropped(self) -> dict[str, int]:
        """Counts per drop reason (reasons that dropped nothing are left out)."""
        counts = np.bincount(self.reason, minlength=len(self.reason_names) + 1)[1:]
        return {name: int(n) for name, n in zip(self.reason_names, counts, strict=True) if n}


@dataclass
class Filter:
    """Base class. Subclasses are dataclasses whose fields are the filter's parameters."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump whenever the filter's output changes for the same input
    # Groups of parameters that are ways of saying the same thing (a threshold or a top fraction): a config
    # that sets one of a group replaces the defaults of the others (experiment/config.py), so
    # `filter.threshold=0.25` alone works although the default config sets a fraction.
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def columns(self) -> tuple[str, ...]:
        """Metadata columns ``score`` reads (besides uid)."""
        return ()

    def embeddings(self) -> tuple[str, ...]:
        """Embedding keys ``score`` reads, e.g. ``("b32_img", "b32_txt")``."""
        return ()

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        """Per-row values for one shard, same row order as ``batch``. Default: nothing to compute."""
        return pd.DataFrame(index=range(len(batch)))

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        raise NotImplementedError(f"filter {self.name!r} must implement select()")

    # -- bookkeeping shared by every filter ---------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params()}


def from_source(resource: str) -> Any:
    """A parameter the pool source fills in when the config leaves it null, e.g.
    ``ground_truth: str | None = from_source("ground_truth")`` (see core/source.py for the names)."""
    return dataclasses.field(default=None, metadata={"resource": resource})


def source_fields(cls: type[Filter]) -> dict[str, str]:
    """Parameter name -> the resource the pool source fills it with."""
    return {f.name: f.metadata["resource"] for f in dataclasses.fields(cls) if "resource" in f.metadata}


def default_params(cls: type[Filter]) -> dict[str, Any]:
    """A filter's parameters at their dataclass defaults (``???`` where a field has none): its default config."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


def numeric_column(batch: ShardBatch, column: str, who: str, choose: str | None = None) -> np.ndarray:
    """One shard's ``column`` as float64 (nulls become NaN), for a filter that compares or ranks numbers.

    A column of another type (text, even text that looks like numbers; booleans; dates) is a PoolError
    naming the shard's file, the column and what it holds: ranking text, or converting it silently, would
    give a subset that looks right and is not. ``choose`` names the parameter that picks the column, if any.
    """
    series = batch.table[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if series.isna().all():  # nothing but nulls (Arrow's null type): no value to rank, every one missing
        return np.full(len(series), np.nan)
    kind = pd.api.types.infer_dtype(series, skipna=True)
    example = series.dropna().iloc[0]
    fix = f"pick a numeric column with {choose}=..., or store" if choose else "store"
    raise PoolError(f"metadata/{batch.shard}.parquet: column {column!r} holds {kind} values (e.g. {example!r}), "
                    f"not numbers, and filter {who!r} compares numbers; {fix} the column as float or integer "
                    "(numbers written as text are not converted)")


def unknown_parameter(name: str, key: str, known: list[str]) -> str:
    """The words of an error for a parameter filter ``name`` does not have, with the nearest one it has."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return f"filter {name!r} has no parameter {key!r}{hint} It takes {', '.join(known) or 'none'}"


def config_steps(filter_cfg: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The filter steps of a config: its ``steps``, or the config itself when it names one filter."""
    return list(filter_cfg.get("steps", [filter_cfg]))


def filter_class(name: str) -> type[Filter]:
    cls = FILTERS.get(name)
    if not cls.name:  # registered through an entry point rather than @register_filter
        cls.name = name
    return cls


def check_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters, each checked against (and converted to) its field's type by OmegaConf's rules:
    ``fraction=abc`` or ``fraction=true`` for a ``float | None`` is a ConfigError naming both."""
    cls = filter_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(unknown_parameter(name, unknown[0], known))
    schema, types = _schema(cls)
    checked = {}
    for key, value in params.items():
        if isinstance(value, str) and value == MISSING:
            raise ConfigError(f"filter {name!r}: {key} has no default; set filter.{key}=<{types.get(key, 'a value')}>")
        if key not in types:  # a type OmegaConf cannot check (an array, a callable): passed as it is
            checked[key] = value
            continue
        try:
            checked[key] = OmegaConf.to_container(OmegaConf.merge(schema, {key: value}))[key]
        except OmegaConfBaseException:
            raise ConfigError(f"filter {name!r}: {key}={value!r} has type {type(value).__name__}, "
                              f"expected {types[key]}") from None  # fmt: skip
        if isinstance(checked[key], list) and _is_tuple(_hints(cls).get(key)):
            checked[key] = tuple(checked[key])  # OmegaConf holds any sequence as a list
    return checked


def build_filter(name: str, params: Mapping[str, Any] | None = None) -> Filter:
    """Instantiate a registered filter; unknown or ill-typed parameters are a ConfigError."""
    cls = filter_class(name)
    try:
        return cls(**check_params(name, params or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"filter {name!r}: {e}") from None


def check_filter_config(filter_cfg: Mapping[str, Any]) -> None:
    """Every step names a registered filter and gives it known parameters of the right types (nothing is
    built, so a run fails on a typo before it generates, trains or scores anything)."""
    for step in config_steps(filter_cfg):
        if step.get("name"):
            check_params(step["name"], {k: v for k, v in step.items() if k != "name"})


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: its field is not checked
        return {}


@functools.cache
def _schema(cls: type[Filter]) -> tuple[Any, dict[str, str]]:
    """OmegaConf's structured config of the filter's fields whose types it can check, and those fields'
    types as readable names."""
    fields, names = [], {}
    for f in dataclasses.fields(cls):
        hint = _hints(cls).get(f.name)
        if hint is None:
            continue  # an annotation that does not resolve
        try:
            OmegaConf.structured(dataclasses.make_dataclass("Field", [(f.name, hint, MISSING)]))
        except (OmegaConfBaseException, ValueError, TypeError):
            continue  # a type OmegaConf has no node for
        fields.append((f.name, hint, dataclasses.field(default=MISSING)))
        names[f.name] = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return OmegaConf.structured(dataclasses.make_dataclass(f"{cls.__name__}Params", fields)), names


def uid_random(uids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per uid that depends only on (uid, seed): shard order cannot change it."""
    raw = np.ascontiguousarray(uids).view(np.uint8).reshape(len(uids), 16)
    key = hashlib.sha256(f"siftbench-seed-{seed}".encode()).digest()[:16]
    mixed = raw ^ np.frombuffer(key, dtype=np.uint8)
    words = mixed.view(np.uint64)
    # splitmix64 finaliser over both words: cheap, well mixed, vectorised.
    with np.errstate(over="ignore"):
        x = words[:, 0] ^ (words[:, 1] * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
