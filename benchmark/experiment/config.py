"""Hydra's Compose API turns ``key=value`` overrides into a config, without taking over argv, the
working directory or logging (a library should not do that to its users).

The ``filter`` group holds the YAMLs of configs/filter/ (named compositions, and defaults that read run-level
values such as ``${subset_fraction}``) and, for every registered filter without a YAML of its name, its
dataclass defaults, so ``filter=<name>`` works for any filter and ``filter.<field>=...`` needs no ``+``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import FILTERS, default_params, filter_class, unknown_parameter

CONFIG_DIR = Path(str(files("siftbench.configs")))


# The config groups a user chooses from (`scale=tiny`); configs/experiment/ is one too, for `baselines`.
GROUPS = ("scale", "filter", "world", "scorer", "eval", "executor", "experiment")


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """The resolved run config (an OmegaConf DictConfig) for these overrides.

    Hydra's errors become one-line ConfigErrors read from its exceptions' fields (the missing option, the
    key and the node it was looked for in), never from its prose: an unknown option or key says which
    one, the nearest name and what there is.
    """
    parsed = parse_overrides(overrides)
    for override in parsed:  # a plugin's filters exist only once imported: before `filter=<its name>` is looked up
        if override.key_or_group == "plugins" and isinstance(override.value(), list):
            import_plugins(override.value())
    register_filter_defaults(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        replace_alternative_defaults(cfg, parsed)
        OmegaConf.resolve(cfg)
    except MissingConfigException as e:
        raise ConfigError(unknown_option(e)) from None
    except ConfigCompositionException as e:
        if isinstance(e.__cause__, ConfigAttributeError | ConfigKeyError) and e.__cause__.parent_node is not None:
            raise ConfigError(unknown_key(e.__cause__)) from None
        raise ConfigError(one_line(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line(e)) from None
    return cfg


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise ConfigError(f"cannot read the override {e.override!r}; write key=value, e.g. filter=clip_score or "
                          "filter.fraction=0.3") from None


def unknown_option(e: MissingConfigException) -> str:
    """``scale=tinyy``: the option, the nearest ones and every option of the group."""
    group, _, name = (e.missing_cfg_file or "").rpartition("/")
    if group not in GROUPS:
        return one_line(e)
    available = options(group)
    return f"unknown {group} {name!r}{did_you_mean(name, available) or '.'} Available: {', '.join(available)}"


def unknown_key(cause: ConfigAttributeError | ConfigKeyError) -> str:
    """``filter.fractoin=0.3``: the key, the nearest key of the node it was looked for in, and its keys."""
    node, key = cause.parent_node, str(cause.key)
    # The node's path as an override writes it: filter.steps[1].radus -> filter.steps.1
    path = str(cause.full_key).replace("[", ".").replace("]", "").removesuffix(key).rstrip(".")
    known = [str(k) for k in node if k != "hydra"]
    top = path.split(".")[0]
    if top == "filter" and "name" in known and node.get("name") in FILTERS:
        name = node.get("name")
        params = [f.name for f in dataclasses.fields(filter_class(name))]
        if key in params:  # a parameter its YAML leaves out: it takes it, with a +
            return f"filter {name!r}: the config does not set {key!r}; add it with +{path}.{key}=<value>"
        return unknown_parameter(name, key, params)
    if not path:
        return f"no setting {key!r}{did_you_mean(key, known, ';') or '.'} Settings: {', '.join(known)}"
    where = f"{top} {node.get('name')!r}" if top in GROUPS and node.get("name") else path
    return f"{where} has no key {key!r}{did_you_mean(key, known, ';') or '.'} It has {', '.join(known)}"


def did_you_mean(word: str, choices: Sequence[str], lead: str = ".") -> str:
    """`. Did you mean 'x'?` (or `; did you mean 'x'?` after ``lead=";"``) for the nearest choices, or ''."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    ask = "Did you mean" if lead == "." else "did you mean"
    return f"{lead} {ask} {', '.join(map(repr, close))}?" if close else ""


def one_line(e: BaseException) -> str:
    """Hydra's or OmegaConf's message on one line, without the config search path, with the key it is about."""
    text = " ".join(str(e).split("Config search path:")[0].split())
    key = getattr(e, "full_key", None)
    return f"{key}: {text}" if key and key not in text else text


def replace_alternative_defaults(cfg: Any, overrides: Sequence[Override]) -> None:
    """A filter parameter set on the command line replaces the config's value of its alternatives
    (``Filter.alternatives``): ``filter.threshold=0.25`` clears clip_score's default fraction. Set both,
    and the filter says to give only one."""
    given: dict[str, set[str]] = {}
    for override in overrides:
        node, _, key = override.key_or_group.rpartition(".")
        if (node == "filter" or node.startswith("filter.steps.")) and not override.is_delete():
            given.setdefault(node, set()).add(key)
    for node_path, keys in given.items():
        node = OmegaConf.select(cfg, node_path)
        name = node.get("name") if OmegaConf.is_dict(node) else None
        if name not in FILTERS:
            continue  # the filter check names what is wrong
        for group in filter_class(name).alternatives:
            if len(keys & set(group)) == 1:
                for other in set(group) - keys:
                    if other in node:
                        node[other] = None


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
    already imported is not run again (its filters would be registered twice). A plugin that cannot be
    imported (no such file or module, a syntax error, an error while it runs) is one ConfigError naming
    the file and line.
    """
    for plugin in plugins or ():
        path = Path(plugin)
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"plugin {plugin}: no such file; give the path of your filters' .py file "
                                  "(relative to where you run siftbench) or an importable module name")
            name = f"siftbench_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except Exception as e:
                del sys.modules[name]  # a fixed file is imported afresh
                raise ConfigError(plugin_failure(plugin, e)) from None
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:
                if plugin != e.name and not plugin.startswith(f"{e.name}."):  # the plugin's own import failed
                    raise ConfigError(plugin_failure(plugin, e)) from None
                raise ConfigError(f"plugin {plugin!r}: {e}; give an importable module or a .py path") from None
            except Exception as e:
                raise ConfigError(plugin_failure(plugin, e)) from None


def plugin_failure(plugin: str, e: Exception) -> str:
    """Why importing a plugin failed, with the plugin's file and line where Python knows them."""
    if isinstance(e, SyntaxError):  # IndentationError and TabError included
        where = f"{e.filename}, line {e.lineno}" if e.lineno else e.filename
        return (f"plugin {plugin}: {type(e).__name__.lower().replace('error', ' error')} at {where}: {e.msg}; "
                "fix the file and rerun")
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if f.filename != __file__ and not f.filename.startswith("<frozen")]
    where = f" at {own[-1].filename}, line {own[-1].lineno}" if own else ""
    fix = (f"install {e.name!r} (pip install ...) in this environment" if isinstance(e, ModuleNotFoundError)
           else "fix the plugin and rerun")
    said = " ".join(str(e).split())  # one line, whatever the plugin's message
    return f"plugin {plugin}: importing it raised {type(e).__name__}: {said}{where}; {fix}"
