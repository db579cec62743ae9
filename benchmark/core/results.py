"""The results file: one JSON per evaluated model, with a versioned schema.

Everything a comparison needs travels in it, so the leaderboard can validate a submission from this
file (and the subset it names) without torch:

    {
      "schema_version": 1,
      "run": {"name", "seed", "created", "git_revision", "siftbench_version", "library_versions", "wall_times_s"},
      "scale": {"name", "hyperparameters": {...}},           # resolved; compared with configs/scale/<name>.yaml
      "filter": {"config": {...}, "filters": [{"name", "version", "params"}]},
      "subset": {"path", "size", "unique", "sha256", "missing_from_pool"},
      "pool": {"path", "size", "hash"},                     # hash: the world's content hash, else sha256 of the
                                                             # metadata files' "name:rows" lines (the leaderboard
                                                             # checks it against the pool it validates uids with)
      "world": {"version", "hash"} | null,                  # only for the embedded world
      "suite": {"name", "version", "hash", "tasks": {task: version}},
      "tasks": {task: {"type", "main_metric", "score", "metrics": {...}, "chance", "groups", "version"}},
      "average": float,                                      # unweighted mean of every task's main metric
      "headline_average": float, "headline_tasks": [...],    # leaves out tasks saturated for every strategy
      "groups": {group: mean},
      "model": {"arch", "checkpoint"},                       # checkpoint: path relative to the run folder (the
                                                             # leaderboard re-evaluates it at toy/tiny)
      "diagnostics": {...}                                   # world only: defect precision/recall, eval copies kept
                                                             # as "contamination_kept": {task: {"planted", "kept"}}
      "oracle_gap_closed": {...} | null
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SiftbenchError

SCHEMA_VERSION = 1

REQUIRED = {
    "schema_version": int,
    "run": dict,
    "scale": dict,
    "filter": dict,
    "subset": dict,
    "pool": dict,
    "suite": dict,
    "tasks": dict,
    "average": float,
}
REQUIRED_TASK_KEYS = ("type", "main_metric", "score", "metrics", "version")


class ResultsError(SiftbenchError):
    pass


def validate_results(data: dict[str, Any], where: str = "results.json") -> dict[str, Any]:
    """Raise ResultsError naming the first field that breaks the schema; return the data unchanged."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: top level must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema_version {version!r}, this siftbench reads {SCHEMA_VERSION}; "
            "re-run `siftbench evaluate` with this version"
        )
    for key, kind in REQUIRED.items():
        if key not in data:
            raise ResultsError(f"{where}: missing field {key!r}")
        value = data[key]
        if kind is float and isinstance(value, int):
            continue
        if not isinstance(value, kind):
            raise ResultsError(f"{where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    for task, entry in data["tasks"].items():
        missing = [k for k in REQUIRED_TASK_KEYS if k not in entry]
        if missing:
            raise ResultsError(f"{where}: task {task!r} lacks {missing}")
        if entry["main_metric"] not in entry["metrics"]:
            raise ResultsError(f"{where}: task {task!r} main metric {entry['main_metric']!r} not among its metrics")
    return data


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ResultsError(f"{path}: no results file; run `siftbench evaluate` on the run directory first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    return validate_results(data, where=str(path))


def mean_of_main_metrics(tasks: dict[str, dict[str, Any]], names: list[str] | None = None) -> float:
    names = list(tasks) if names is None else names
    if not names:
        return float("nan")
    return float(sum(tasks[n]["score"] for n in names) / len(names))


def datacomp_eval_lines(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The same results in DataComp's ``eval_results.jsonl`` shape, one dict per task."""
    lines = []
    for task, entry in data["tasks"].items():
        metrics = dict(entry["metrics"])
        metrics["main_metric"] = entry["score"]
        lines.append({"key": task, "dataset": entry.get("dataset", task), "metrics": metrics})
    return lines
