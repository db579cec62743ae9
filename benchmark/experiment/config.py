"""Hydra's Compose API turns ``key=value`` overrides into a config, without taking over argv, the
working directory or logging (a library should not do that to its users)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import ConfigError

CONFIG_DIR = Path(str(files("siftbench.configs")))


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """The resolved run config (an OmegaConf DictConfig) for these overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        choices = {g: options(g) for g in ("scale", "filter", "world", "scorer", "eval", "executor")}
        raise ConfigError(f"{e}\nconfig groups and their options: {choices}") from None
    return cfg


def options(group: str) -> list[str]:
    """The names available in one config group (the YAML files in configs/<group>/)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def to_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def import_plugins(plugins: Sequence[str]) -> None:
    """Import user modules (by import name or .py path) so their ``@register_filter`` classes exist.

    Only for the user's own runs: the leaderboard never imports or executes anything submitted.
    """
    import importlib
    import importlib.util
    import sys

    for plugin in plugins or ():
        path = Path(plugin)
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"plugin {plugin}: no such file")
            spec = importlib.util.spec_from_file_location(f"siftbench_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[spec.name] = module  # type: ignore[union-attr]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:
                raise ConfigError(f"plugin {plugin!r}: {e}; give an importable module or a .py path") from None
