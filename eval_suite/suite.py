"""Suites as data: a YAML file (Hydra group ``eval``) lists tasks; loading it checks every task folder.

    name: world
    version: 1
    missing_hint: generate the world with `siftbench world`     # optional: how to get absent data
    tasks:
      - {name: shapes, path: shapes, type: zeroshot_classification, main_metric: acc1, groups: [headline], version: 1}

Per task: ``name``, ``path`` (relative to the root folder given at run time), ``type`` (a registered
task type), ``main_metric``, ``version`` (int; bump on ANY change to the task's data or metric, so a
score never silently changes meaning), and optionally ``chance`` (default 1/num_classes for
classification, k/num_images for retrieval recall@k), ``groups`` (tags averaged together), ``source`` (where to download the folder),
``size`` (expected samples, a check), ``needs`` (why siftbench cannot score it yet: listed, never run),
``group_field`` (index of the group label in each sample's ``.npy`` metadata: adds worst-group metrics,
see eval_suite/data.py) with ``exclude_groups`` (group ids left out of the worst group), and ``key`` /
``title`` (the task's key and dataset name in DataComp's ``eval_results.jsonl``; default: ``name``).

Loading fails early, before anyone trains a model for an hour, on anything the evaluation would trip
over later: unknown keys or types, a main metric the task cannot produce, a folder without
clip_benchmark's layout, a missing folder (unless ``allow_missing``, which skips and reports it).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from siftbench.benchmark.core.errors import ConfigError

from .data import EvalDataError, MissingDatasetError, TaskData, open_task
from .tasks import TASK_TYPES

log = logging.getLogger(__name__)

SUITE_DIR = Path(str(files("siftbench.configs") / "eval"))
_SUITE_KEYS = {"name", "version", "tasks", "description", "missing_hint"}
_TASK_REQUIRED = ("name", "path", "type", "main_metric", "version")
_TASK_OPTIONAL = {"chance", "groups", "source", "size", "needs", "description", "group_field", "exclude_groups",
                  "key", "title"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: str
    type: str
    main_metric: str
    version: int
    chance: float | None = None
    groups: tuple[str, ...] = ()
    source: str | None = None
    size: int | None = None
    needs: str | None = None
    description: str | None = None
    group_field: int | None = None
    exclude_groups: tuple[int, ...] = ()
    key: str | None = None
    title: str | None = None


@dataclass
class Suite:
    """A loaded suite: the tasks that will run (folders checked) and the ones skipped, with why."""

    name: str
    version: int
    root: Path
    hash: str  # of the definition (names, paths, types, metrics, versions, groups, chance)
    tasks: list[TaskSpec]
    data: dict[str, TaskData] = field(repr=False)
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_specs: list[TaskSpec] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        """The ``suite`` block of results.json: what a score was measured on."""
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "tasks": {t.name: t.version for t in self.tasks},
            "skipped": dict(self.skipped),
        }


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(name_or_path: str | Path, root: str | Path, allow_missing: bool = False) -> Suite:
    """A suite by name (``configs/eval/<name>.yaml``) or YAML path, with task folders under ``root``."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(str(name_or_path), available_suites(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"Unknown eval suite {str(name_or_path)!r}.{hint} Available: {', '.join(available_suites())} "
                "(or give the path of a suite YAML file)"
            )
    return suite_from_config(read_suite_file(path), root, allow_missing=allow_missing, where=str(path))


def read_suite_file(path: Path) -> Any:
    """A suite definition as plain YAML data (no torch, no eval code: the leaderboard reads it too)."""
    if not path.is_file():
        raise ConfigError(f"eval suite file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def shipped_suite_versions(name: str, suite_dir: Path = SUITE_DIR) -> Mapping[str, Any] | None:
    """{task: version} of the tasks the harness scores in ``configs/eval/<name>.yaml``; None if not shipped.

    Tasks marked ``needs`` are listed there but never scored, so no result is expected for them.
    """
    path = Path(suite_dir) / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        return None
    config = read_suite_file(path) or {}
    tasks = config.get("tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list):
        return None
    return {str(t["name"]): t.get("version") for t in tasks if isinstance(t, dict) and "name" in t and not t.get("needs")}


def suite_from_config(
    config: Mapping[str, Any], root: str | Path, allow_missing: bool = False, where: str = "eval suite"
) -> Suite:
    """Build a Suite from a plain mapping (e.g. the Hydra-composed ``cfg.eval`` as a dict)."""
    root = Path(root)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name, version and tasks")
    unknown = set(config) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SUITE_KEYS)}")
    for key, kind in (("name", str), ("version", int), ("tasks", list)):
        if not isinstance(config.get(key), kind):
            raise ConfigError(f"{where}: {key!r} must be a {kind.__name__}, got {config.get(key)!r}")
    specs = [_task_spec(entry, f"{where}: task #{i}") for i, entry in enumerate(config["tasks"])]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: task name(s) {duplicates} appear more than once")
    if not specs:
        raise ConfigError(f"{where}: no tasks")

    runnable: list[TaskSpec] = []
    data: dict[str, TaskData] = {}
    skipped: dict[str, str] = {}
    missing: list[TaskSpec] = []
    for spec in specs:
        if spec.needs:
            skipped[spec.name] = f"not supported: {spec.needs}"
            continue
        try:
            task_data = open_task(root / spec.path)
        except MissingDatasetError:
            missing.append(spec)
            continue
        except EvalDataError as e:
            raise EvalDataError(f"{where}: task {spec.name!r}: {e}") from None
        if spec.group_field is not None:
            task_data = replace(task_data, group_field=spec.group_field, exclude_groups=spec.exclude_groups)
        data[spec.name] = task_data
        runnable.append(_check_task(spec, task_data, where))
    if missing and not allow_missing:
        raise MissingDatasetError(_missing_message(config, missing, root, where))
    for spec in missing:
        skipped[spec.name] = f"missing: {root / spec.path}"
        log.warning("eval task %s skipped: folder %s is missing", spec.name, root / spec.path)
    return Suite(
        name=config["name"],
        version=config["version"],
        root=root,
        hash=_definition_hash(config["name"], config["version"], specs),
        tasks=runnable,
        data=data,
        skipped=skipped,
        skipped_specs=[s for s in specs if s.name in skipped],
    )


def _task_spec(entry: Any, where: str) -> TaskSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {entry!r}")
    where = f"{where} ({entry.get('name', '?')})"
    missing = [k for k in _TASK_REQUIRED if k not in entry]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}; required: {list(_TASK_REQUIRED)}")
    unknown = set(entry) - set(_TASK_REQUIRED) - _TASK_OPTIONAL
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {[*_TASK_REQUIRED, *sorted(_TASK_OPTIONAL)]}"
        )
    if not isinstance(entry["version"], int) or isinstance(entry["version"], bool):
        raise ConfigError(f"{where}: version must be an int (bump it on any change), got {entry['version']!r}")
    groups = entry.get("groups") or ()
    if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
        raise ConfigError(f"{where}: groups must be a list of tags, got {groups!r}")
    chance = entry.get("chance")
    if chance is not None and not (isinstance(chance, int | float) and 0 <= chance <= 1):
        raise ConfigError(f"{where}: chance must be a number in [0, 1], got {chance!r}")
    group_field = entry.get("group_field")
    if group_field is not None and (isinstance(group_field, bool) or not isinstance(group_field, int)
                                    or group_field < 0):
        raise ConfigError(f"{where}: group_field must be the index (int >= 0) of the group label in each "
                          f"sample's .npy metadata, got {group_field!r}")
    exclude = entry.get("exclude_groups") or ()
    if isinstance(exclude, str) or not all(isinstance(g, int) and not isinstance(g, bool) for g in exclude):
        raise ConfigError(f"{where}: exclude_groups must be a list of integer group ids, got {exclude!r}")
    if exclude and group_field is None:
        raise ConfigError(f"{where}: exclude_groups needs group_field (which .npy field holds the group)")
    if not entry.get("needs"):
        TASK_TYPES.get(str(entry["type"]))  # unknown type: ConfigError with did-you-mean
    return TaskSpec(
        name=str(entry["name"]),
        path=str(entry["path"]),
        type=str(entry["type"]),
        main_metric=str(entry["main_metric"]),
        version=entry["version"],
        chance=None if chance is None else float(chance),
        groups=tuple(groups),
        source=entry.get("source"),
        size=entry.get("size"),
        needs=entry.get("needs"),
        description=entry.get("description"),
        group_field=group_field,
        exclude_groups=tuple(exclude),
        key=None if entry.get("key") is None else str(entry["key"]),
        title=None if entry.get("title") is None else str(entry["title"]),
    )


def _check_task(spec: TaskSpec, data: TaskData, where: str) -> TaskSpec:
    """The folder fits the task type and the main metric exists; fill in the default chance level."""
    task = TASK_TYPES.get(spec.type)()
    if data.dataset_type != task.dataset_type:
        raise EvalDataError(
            f"{where}: task {spec.name!r} is {spec.type} but {data.folder} holds a {data.dataset_type} "
            f"dataset (dataset_type.txt {'says so' if data.dataset_type == 'retrieval' else 'is absent'}); "
            "fix the task's type or the folder"
        )
    if spec.group_field is not None and data.dataset_type != "classification":
        raise ConfigError(f"{where}: task {spec.name!r} has group_field, but worst-group metrics exist only "
                          "for classification tasks; remove group_field")
    metrics = task.metric_names(data)
    if spec.main_metric not in metrics:
        classes = f" with {len(data.classnames)} classes" if data.classnames else ""
        hint = (" (worst-group metrics need group_field: the index of the group label in each sample's .npy)"
                if "worst_group" in spec.main_metric and spec.group_field is None else "")
        raise ConfigError(
            f"{where}: task {spec.name!r} main_metric {spec.main_metric!r} is not one of {list(metrics)}, "
            f"the metrics of {spec.type}{classes}{hint}"
        )
    if spec.chance is None and data.classnames:
        per_guess = 5 if spec.main_metric == "acc5" else 1
        return replace(spec, chance=min(1.0, per_guess / len(data.classnames)))
    return spec


def _missing_message(config: Mapping[str, Any], missing: list[TaskSpec], root: Path, where: str) -> str:
    # One line, as every user error is printed: the tasks with their folders under root, then how to get them.
    tasks = ", ".join(f"{spec.name} ({spec.path}{f', from {spec.source}' if spec.source else ''})" for spec in missing)
    hint = " ".join(str(config.get("missing_hint") or "").split()).rstrip(".")
    return (f"{where}: {len(missing)} eval task folder(s) missing under {root}: {tasks}; {hint + '; ' if hint else ''}"
            "or pass allow_missing=True to skip them (the results then say which were skipped)")


def _definition_hash(name: str, version: int, specs: list[TaskSpec]) -> str:
    # Only what changes a score or an average; descriptions and download hints can change freely.
    scoring = ("name", "path", "type", "main_metric", "version", "chance", "groups", "needs", "group_field",
               "exclude_groups")
    tasks = [{k: v for k, v in asdict(s).items() if k in scoring} for s in specs]
    blob = json.dumps({"name": name, "version": version, "tasks": tasks}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def summarize(tasks: Mapping[str, Mapping[str, Any]], suite: Suite | None = None) -> dict[str, Any]:
    """Unweighted mean of the main metrics, and the mean per group tag, as DataComp's aggregate_scores.py
    computes its ``Average`` and group scores (ImageNet dist. shifts, VTAB, Retrieval).

    With the suite, ``incomplete_groups`` names, per group, the tasks it lacks because they were skipped:
    such a group mean (and the average) is not comparable with one over the full suite.
    """
    scores = {name: float(entry["score"]) for name, entry in tasks.items()}
    groups: dict[str, list[float]] = {}
    for name, entry in tasks.items():
        for tag in entry.get("groups") or ():
            groups.setdefault(tag, []).append(scores[name])
    summary: dict[str, Any] = {
        "average": _mean(list(scores.values())),
        "groups": {tag: _mean(values) for tag, values in groups.items()},
        "num_tasks": len(scores),
    }
    if suite is not None:
        summary["skipped"] = dict(suite.skipped)
        incomplete: dict[str, list[str]] = {}
        for spec in suite.skipped_specs:
            for tag in spec.groups:
                incomplete.setdefault(tag, []).append(spec.name)
        summary["incomplete_groups"] = incomplete
    return summary


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")
