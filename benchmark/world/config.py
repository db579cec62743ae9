"""World configs: every config is merged over ``configs/world/default.yaml`` and checked before use.

The YAML file is the one place defaults live. A user config (a dict, a DictConfig from Hydra, or the
name of a file in configs/world/) lists only what differs and is merged the way Hydra merges: mappings
key by key, lists and values replaced. A key the default does not have is an error with a did-you-mean
(except in the open mappings ``palette`` and ``look_alikes``), so a typo cannot silently give the
default world.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from siftbench.benchmark.core.errors import ConfigError

from .render import BACKGROUNDS, SHAPES, VARIANTS

DEFECTS = (
    "misaligned",
    "wrong_colour",
    "wrong_shape",
    "near_synonym",
    "spam",
    "non_english",
    "exact_duplicate",
    "near_duplicate",
    "degenerate",
    "eval_copy",
)
DEGENERATE_VARIANTS = ("tiny", "extreme_aspect", "blank")
LANGUAGES = ("de", "fr", "es")
# Mappings keyed by user-chosen names: new keys are welcome there.
_OPEN_MAPPINGS = {("concepts", "palette"), ("captions", "look_alikes")}


def config_dir() -> Path:
    return Path(str(resources.files("siftbench.configs"))) / "world"


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """A world config by name (``"toy"`` = configs/world/toy.yaml) or path, with its Hydra defaults list
    applied (``defaults: [default, _self_]``: the named configs of this folder first, then this file)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in config_dir().glob("*.yaml"))
        raise ConfigError(f"world config {name_or_path!r}: no file {path}; known world configs: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    bases = [b for b in data.pop("defaults", []) if b != "_self_"]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, load_yaml(base), (), open_all=True)
    return _merge(merged, data, (), open_all=True)


def resolve_config(cfg: Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """The full, validated world config: ``cfg`` (dict, DictConfig, config name or path) over the default."""
    if cfg is None:
        user: dict[str, Any] = {}
    elif isinstance(cfg, str | Path):
        user = load_yaml(cfg)
    else:
        user = _plain(cfg)
    merged = _merge(load_yaml("default"), user, ())
    _validate(merged)
    # Knobs added after a world version shipped are left out at their neutral value, so the worlds made
    # before them keep their cache key (and their runs their identity).
    for (section, key), neutral in _NEUTRAL_KNOBS.items():
        if merged[section].get(key) == neutral:
            del merged[section][key]
    return merged


_NEUTRAL_KNOBS = {("concepts", "tail_weight"): 1.0, ("defects", "wrong_names"): "uniform"}
WRONG_NAMES = ("uniform", "frequency")


def knob(cfg: Mapping[str, Any], section: str, key: str) -> Any:
    """A late knob's value in a resolved config, which leaves it out at its neutral value."""
    return cfg[section].get(key, _NEUTRAL_KNOBS[(section, key)])


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the resolved config as canonical JSON: the world's cache key."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    if hasattr(cfg, "_metadata"):  # an omegaconf DictConfig; imported lazily so plain dicts need no omegaconf
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(cfg))


def _merge(
    base: dict[str, Any], over: Mapping[str, Any], where: tuple[str, ...], open_all: bool = False
) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        here = (*where, str(key))
        if key not in base:
            if open_all or where in _OPEN_MAPPINGS:
                out[key] = copy.deepcopy(value)
                continue
            close = difflib.get_close_matches(str(key), list(base), n=1)
            hint = f" Did you mean {'.'.join((*where, close[0]))!r}?" if close else ""
            raise ConfigError(
                f"world config: unknown key {'.'.join(here)!r}.{hint} Known here: {sorted(base)}"
            )
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"world config: {'.'.join(here)} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, here, open_all)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validate(cfg: dict[str, Any]) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"world config: {key} = {_get(cfg, key)!r}: {why}")

    for key in (
        "image_size",
        "pool_size",
        "reference_size",
        "samples_per_shard",
        "eval.per_class",
        "eval.tail_per_class",
        "eval.retrieval_images",
        "eval.samples_per_shard",
    ):
        value = _get(cfg, key)
        if not isinstance(value, int) or value < 1:
            fail(key, "must be a positive integer")
    if cfg["image_size"] < 16:
        fail("image_size", "must be at least 16 px (smaller images are how the world plants 'tiny' defects)")
    concepts = cfg["concepts"]
    shapes = concepts["shapes"]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        fail("concepts.shapes", f"the renderer cannot draw {unknown}; it draws {sorted(SHAPES)}")
    if len(shapes) < 2 or len(set(shapes)) != len(shapes):
        fail("concepts.shapes", "needs at least 2 distinct shapes")
    colours, palette = concepts["colours"], concepts["palette"]
    if len(colours) < 2 or len(set(colours)) != len(colours):
        fail("concepts.colours", "needs at least 2 distinct colour names")
    missing = [c for c in colours if c not in palette]
    if missing:
        fail("concepts.colours", f"{missing} not in concepts.palette; add their [R, G, B] there")
    for name in colours:
        rgb = palette[name]
        if not (isinstance(rgb, list | tuple) and len(rgb) == 3 and all(0 <= int(v) <= 255 for v in rgb)):
            fail(f"concepts.palette.{name}", "must be an [R, G, B] list of 0-255")
    if not 0 <= concepts["digit_fraction"] < 1:
        fail("concepts.digit_fraction", "must be in [0, 1)")
    if not 0 < concepts["tail_weight"] <= 1:
        fail("concepts.tail_weight", "must be in (0, 1] (1 = the plain Zipf tail)")
    if concepts["zipf_exponent"] < 0:
        fail("concepts.zipf_exponent", "must be >= 0 (0 = uniform shapes)")
    lo, hi = concepts["scale"]
    if not 0 < lo <= hi <= 0.5:
        fail("concepts.scale", "must be [low, high] with 0 < low <= high <= 0.5 (radius / image side)")
    bad = [b for b in concepts["backgrounds"] if b not in BACKGROUNDS]
    if bad or not concepts["backgrounds"]:
        fail("concepts.backgrounds", f"unknown {bad}; known: {list(BACKGROUNDS)}")
    templates = cfg["captions"]["templates"]
    if not templates or not all("{shape}" in t for t in templates):
        fail("captions.templates", "every template needs a {shape} slot")
    defects = cfg["defects"]
    rates = {d: defects[d] for d in DEFECTS}
    if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 0.9:
        fail("defects", "rates must be in [0, 1] and sum to at most 0.9 (copies need clean sources)")
    for key, known in (
        ("near_duplicate_variants", set(VARIANTS) - {"exact"}),
        ("degenerate_variants", DEGENERATE_VARIANTS),
        ("eval_copy_variants", set(VARIANTS)),
        ("non_english_languages", LANGUAGES),
    ):
        chosen = defects[key]
        if not chosen or any(v not in known for v in chosen):
            fail(f"defects.{key}", f"choose one or more of {sorted(known)}")
    if defects["wrong_names"] not in WRONG_NAMES:
        fail("defects.wrong_names", f"choose one of {list(WRONG_NAMES)}")
    if not 1 <= cfg["eval"]["tail_shapes"] < len(shapes):
        fail("eval.tail_shapes", f"must be between 1 and {len(shapes) - 1} (the number of shapes - 1)")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value
