"""evaluate: a checkpoint (or a pretrained tag) on an eval suite -> per-task results.

The model is built from its architecture name and loaded with the checkpoint's weights; a checkpoint
that does not fit the architecture is a StageError naming both (``models.load_model``). Evaluation runs
in fp32 (``eval_suite.evaluate_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.stages.models import load_model
from siftbench.eval_suite import evaluate_model


def evaluate_checkpoint(
    arch: str,
    checkpoint: str | Path | None,
    suite: Any,
    pretrained: str | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per-task results (see ``eval_suite.evaluate_model``) of ``arch`` with these weights on ``suite``."""
    if checkpoint is None and pretrained is None:
        raise ConfigError(f"evaluate {arch}: give a checkpoint or a pretrained tag (random weights say nothing)")
    model, preprocess, tokenizer = load_model(arch, checkpoint=checkpoint, pretrained=pretrained, device=device)
    return evaluate_model(model, preprocess, tokenizer, suite, device=device, batch_size=batch_size,
                          progress=progress, num_workers=num_workers)
