"""Evaluate one model on every runnable task of a suite."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from siftbench.benchmark.core.errors import StageError
from siftbench.benchmark.core.progress import progress_bar

from .suite import Suite
from .tasks import TASK_TYPES

log = logging.getLogger(__name__)


def evaluate_model(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    suite: Suite,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per task: type, main_metric, score, metrics, chance, groups, version, dataset, num_samples, skipped.

    Runs in fp32 without autocast (autocast on CPU means bfloat16, and numbers must reproduce).
    ``num_workers`` DataLoader workers decode images; results do not depend on it.
    """
    import torch  # heavy, optional (siftbench[ml])

    model = model.to(device).eval()
    if suite.skipped:
        log.warning("suite %s: skipping %s", suite.name, suite.skipped)
    results: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for spec in progress_bar(suite.tasks, enabled=progress, desc=f"eval {suite.name}", unit="task"):
            data = suite.data[spec.name]
            start = time.perf_counter()
            result = TASK_TYPES.get(spec.type)().evaluate(
                model, preprocess, tokenizer, data,
                device=device, batch_size=batch_size, num_workers=num_workers, progress=progress,
            )
            if spec.main_metric not in result.metrics:
                raise StageError(
                    f"eval task {spec.name!r} ({spec.type}): produced {sorted(result.metrics)}, not its main metric "
                    f"{spec.main_metric!r}; fix main_metric in the suite, or the task type's metric_names()"
                )
            skipped = result.skipped
            if skipped.total or skipped.damaged_shards:
                log.warning("eval task %s: skipped %s; damaged shards %s", spec.name, dict(skipped.reasons),
                            skipped.damaged_shards)
            seen = result.num_samples + skipped.total
            if spec.size is not None and (seen != spec.size or skipped.damaged_shards):
                log.warning("eval task %s: %d samples read, the suite expects %d", spec.name, seen, spec.size)
            results[spec.name] = {
                "type": spec.type,
                "main_metric": spec.main_metric,
                "score": result.metrics[spec.main_metric],
                "metrics": result.metrics,
                "chance": spec.chance if spec.chance is not None else (result.chance or {}).get(spec.main_metric),
                "groups": list(spec.groups),
                "version": spec.version,
                "dataset": data.folder.name,
                "num_samples": result.num_samples,
                "skipped": skipped.total,
                "skipped_reasons": dict(skipped.reasons),
                "damaged_shards": list(skipped.damaged_shards),
                "seconds": round(time.perf_counter() - start, 3),
            }
    return results
