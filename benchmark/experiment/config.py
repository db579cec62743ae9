"""Hydra's Compose API turns ``key=value`` overrides into a config, without taking over argv, the
working directory or logging (a library should not do that to its users).

The ``filter`` group holds the YAMLs of configs/filter/ (named compositions, and defaults that read run-level
values such as ``${subset_fraction}``) and, for every registered filter without a YAML of its name, its
dataclass defaults, so ``filter=<name>`` works for any filter and ``filter.<field>=...`` needs no ``+``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import FILTERS, default_params, filter_class

CONFIG_DIR = Path(str(files("siftbench.configs")))


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """The resolved run config (an OmegaConf DictConfig) for these overrides."""
    register_filter_defaults(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        choices = {g: options(g) for g in ("scale", "filter", "world", "scorer", "eval", "executor")}
        raise ConfigError(f"{e}\nconfig groups and their options: {choices}") from None
    return cfg


def options(group: str) -> list[str]:
    """The names available in one config group: the YAML files in configs/<group>/, and for ``filter`` every
    registered filter too."""
    names = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
    return sorted(names | set(FILTERS.names()) if group == "filter" else names)


def register_filter_defaults(overrides: Sequence[str] = ()) -> None:
    """Give each built-in filter without a YAML, and a plugin's filter chosen by ``filter=<name>``, its
    dataclass defaults as ``filter/<name>`` in Hydra's ConfigStore. Third-party filters are imported only
    when chosen, so a broken plugin cannot break every config."""
    yamls = {p.stem for p in (CONFIG_DIR / "filter").glob("*.yaml")}
    chosen = {o.split("=", 1)[1] for o in overrides if o.startswith("filter=")}
    for name in (set(FILTERS.imported()) | (chosen & set(FILTERS.names()))) - yamls:
        node = {"name": name, **default_params(filter_class(name))}
        ConfigStore.instance().store(group="filter", name=name, node=node)


def to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def import_plugins(plugins: Sequence[str]) -> None:
    """Import user modules (by import name or .py path) so their ``@register_filter`` classes exist.

    Only for the user's own runs: the leaderboard never imports or executes anything submitted. A plugin
    already imported is not run again (its filters would be registered twice).
    """
    for plugin in plugins or ():
        path = Path(plugin)
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"plugin {plugin}: no such file")
            if f"siftbench_plugin_{path.stem}" in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(f"siftbench_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[spec.name] = module  # type: ignore[union-attr]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:
                raise ConfigError(f"plugin {plugin!r}: {e}; give an importable module or a .py path") from None
