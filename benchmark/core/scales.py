"""Scales: the fixed training budgets (configs/scale/*.yaml) and the check that keeps runs comparable.

A scale's *benchmark* fields (model, samples seen, batch, optimiser, schedule, ...) define what is being
compared; changing one makes a run non-comparable, so an override of one is refused unless the config
says ``comparable: false``. Its *execution* fields (checkpoints, precision, loader workers, gradient
checkpointing, local loss) change how the budget runs on a given machine, not the budget, and are free.
"""

from __future__ import annotations

import difflib
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from siftbench.benchmark.core.errors import ConfigError

SCALE_DIR = Path(str(files("siftbench.configs") / "scale"))

# What a result is compared on. gather_with_grad is here because without it the gathered negatives carry
# no gradient, which changes the updates of a multi-process run (local_loss alone does not).
BENCHMARK_FIELDS: dict[str, type] = {
    "model": str,
    "samples_seen": int,
    "global_batch": int,
    "lr": float,
    "warmup": int,
    "beta1": float,
    "beta2": float,
    "eps": float,
    "weight_decay": float,
    "schedule": str,
    "image_size": int,
    "dataset_resampled": bool,
    "gather_with_grad": bool,
}
EXECUTION_FIELDS: dict[str, type] = {
    "epochs": int,
    "precision": str,
    "workers": int,
    "grad_checkpointing": bool,
    "local_loss": bool,
}
META_FIELDS: dict[str, type] = {"name": str, "comparable": bool}
ALL_FIELDS = {**META_FIELDS, **BENCHMARK_FIELDS, **EXECUTION_FIELDS}
# The names DataComp's scale_configs.py and open_clip_train use, which people will type.
ALIASES = {"learning_rate": "lr", "batch_size": "global_batch", "train_num_samples": "samples_seen", "wd": "weight_decay",
           "num_checkpoints": "epochs", "lr_scheduler": "schedule", "warmup_steps": "warmup"}


def available_scales() -> list[str]:
    return sorted(p.stem for p in SCALE_DIR.glob("*.yaml"))


def check_scale_name(name: str) -> Path:
    """The shipped scale file of ``name``; an unknown name is a ConfigError with the closest names."""
    path = SCALE_DIR / f"{name}.yaml"
    if not path.is_file():
        names = available_scales()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown scale {name!r}.{hint} Available: {', '.join(names)} (configs/scale/*.yaml)")
    return path


def load_scale(name: str) -> dict[str, Any]:
    """The shipped scale ``name`` as a plain dict (typed, all fields present)."""
    path = check_scale_name(name)
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return typed_scale(data, where=str(path))


def resolved_scale(scale: dict[str, Any]) -> dict[str, Any]:
    """Validate a composed scale config (shipped scale plus overrides) and return it typed.

    Raises ConfigError on unknown or missing fields, and when a benchmark field differs from the shipped
    scale of the same name without an explicit ``comparable: false``.
    """
    name = scale.get("name")
    if not name:
        raise ConfigError("scale config has no 'name'; start from a shipped scale, e.g. scale=tiny")
    typed = typed_scale(dict(scale), where=f"scale {name!r}")
    drift = check_scale(typed, name) if name in available_scales() else ["not a shipped scale"]
    if drift and typed["comparable"]:
        raise ConfigError(
            f"scale {name!r}: {'; '.join(drift)}. These define the benchmark, so results would not be "
            f"comparable; undo the override, or add scale.comparable=false to run it as an experiment"
        )
    return typed


def check_scale(resolved: dict[str, Any], name: str) -> list[str]:
    """Benchmark hyperparameters in ``resolved`` that differ from shipped scale ``name`` (empty = comparable).

    Unknown fields count as differences: a typo (``learning_rate=...``) must not pass silently.
    """
    shipped = load_scale(name)
    problems = [f"unknown field {k!r}" for k in sorted(set(resolved) - set(ALL_FIELDS))]
    for key in BENCHMARK_FIELDS:
        have, want = resolved.get(key), shipped[key]
        if not _same(have, want):
            problems.append(f"{key}={have!r} (scale {name!r} fixes {want!r})")
    return problems


def scale_table() -> Any:
    """All shipped scales as a pandas DataFrame, smallest first (for ``siftbench scales``)."""
    rows = []
    for name in available_scales():
        s = load_scale(name)
        rows.append({
            "scale": name,
            "model": s["model"],
            "samples_seen": s["samples_seen"],
            "global_batch": s["global_batch"],
            "steps": -(-s["samples_seen"] // s["global_batch"]),
            "lr": s["lr"],
            "warmup": s["warmup"],
            "beta2": s["beta2"],
            "image_size": s["image_size"],
            "epochs": s["epochs"],
            "precision": s["precision"],
        })
    return pd.DataFrame(rows).sort_values(["samples_seen", "scale"]).reset_index(drop=True)


def typed_scale(data: dict[str, Any], where: str = "scale") -> dict[str, Any]:
    """Check a scale dict's fields and types (no comparison with the shipped scale); return it typed."""
    unknown = sorted(set(data) - set(ALL_FIELDS))
    if unknown:
        hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := _suggest(u)) else "") for u in unknown]
        raise ConfigError(f"{where}: unknown field(s) {', '.join(hints)}; fields are {', '.join(ALL_FIELDS)}")
    missing = [k for k in ALL_FIELDS if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}; copy a shipped scale from configs/scale/")
    out: dict[str, Any] = {}
    for key, kind in ALL_FIELDS.items():
        value = data[key]
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                out[key] = value
            elif kind is int:
                if isinstance(value, bool) or float(value) != int(value):
                    raise TypeError
                out[key] = int(value)
            else:
                out[key] = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}={value!r} is not a {kind.__name__}") from None
    for key in ("samples_seen", "global_batch", "epochs"):
        if out[key] <= 0:
            raise ConfigError(f"{where}: {key} must be positive, got {out[key]}")
    if out["workers"] < 0 or out["warmup"] < 0:
        raise ConfigError(f"{where}: workers and warmup must be >= 0")
    return out


def _suggest(field: str) -> list[str]:
    if field in ALIASES:
        return [ALIASES[field]]
    return [ALIASES.get(m, m) for m in difflib.get_close_matches(field, [*ALL_FIELDS, *ALIASES], n=1)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and isinstance(a, int | float) and not isinstance(a, bool):
        return abs(float(a) - b) <= 1e-12 * max(1.0, abs(b))
    return a == b and type(a) is type(b)
