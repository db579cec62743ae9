"""Results in DataComp's ``eval_results.jsonl`` shape, so their tools (aggregate_scores.py, leaderboard
submission) read ours.

One JSON object per line and task, as mlfoundations/datacomp's evaluate.py writes them::

    {"key": "vtab/caltech101", "dataset": "Caltech-101", "metrics": {"acc1": ..., "main_metric": 0.83}}

``key`` is DataComp's task key and ``dataset`` its display name (the names aggregate_scores.py groups by);
a suite task sets them with ``key`` and ``title``, else both are the task's name. ``main_metric`` sits
inside ``metrics`` and holds the main metric's value; a metric that is not a number (NaN) is written as
null, as DataComp writes a missing one. Skipped tasks get no line, so DataComp's aggregation, which
expects all 38, refuses an incomplete file instead of averaging fewer tasks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.atomic import write_text

from .suite import Suite


def datacomp_records(tasks: Mapping[str, Mapping[str, Any]], suite: Suite | None = None) -> list[dict[str, Any]]:
    """One ``{"key", "dataset", "metrics"}`` record per evaluated task, in the suite's order."""
    specs = {spec.name: spec for spec in suite.tasks} if suite is not None else {}
    records = []
    for name, entry in tasks.items():
        spec = specs.get(name)
        metrics = {metric: _number(value) for metric, value in entry["metrics"].items()}
        metrics["main_metric"] = _number(entry["metrics"][entry["main_metric"]])
        records.append({
            "key": (spec.key if spec is not None and spec.key else name),
            "dataset": (spec.title if spec is not None and spec.title else name),
            "metrics": metrics,
        })
    return records


def write_eval_results_jsonl(path: str | Path, tasks: Mapping[str, Mapping[str, Any]],
                             suite: Suite | None = None) -> Path:
    lines = [json.dumps(record, allow_nan=False) for record in datacomp_records(tasks, suite)]
    return write_text(path, "".join(f"{line}\n" for line in lines))


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
