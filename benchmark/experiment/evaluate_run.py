"""`siftbench evaluate`: a finished run directory (its model and final checkpoint), or an architecture with
weights, on an eval suite; optionally written as evaluation.json and DataComp's eval_results.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from siftbench.benchmark.core.atomic import write_json
from siftbench.benchmark.core.errors import ConfigError, StageError
from siftbench.benchmark.experiment.runner import pool_source
from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
from siftbench.eval_suite import load_suite, summarize, write_eval_results_jsonl


def evaluate_main(args: argparse.Namespace) -> dict[str, Any]:
    """`siftbench evaluate`: a run directory (its model and final checkpoint), or --model with weights."""
    arch, checkpoint, eval_root = args.model, args.checkpoint, args.eval_root
    if args.run_dir is not None:
        run_arch, run_checkpoint, run_cfg = _from_run_dir(Path(args.run_dir))
        arch, checkpoint = arch or run_arch, checkpoint or run_checkpoint
        # The eval sets the run was scored on (asking the source may generate the world: only when needed).
        eval_root = eval_root or run_cfg.get("eval_root") or pool_source(run_cfg).eval_root()
    if arch is None:
        raise ConfigError("siftbench evaluate: give a run directory, or --model with --checkpoint or --pretrained")
    if eval_root is None:
        raise ConfigError("siftbench evaluate: --eval-root <folder with the suite's datasets> is needed here")
    suite = load_suite(args.suite, root=eval_root)
    tasks = evaluate_checkpoint(arch, checkpoint, suite, pretrained=args.pretrained, device=args.device)
    out = {
        "model": {"arch": arch, "checkpoint": None if checkpoint is None else str(checkpoint),
                  "pretrained": args.pretrained},
        "suite": suite.identity(),
        "tasks": tasks,
        **summarize(tasks, suite),
    }
    if getattr(args, "out", None) is not None:
        write_json(Path(args.out) / "evaluation.json", out)
        write_eval_results_jsonl(Path(args.out) / "eval_results.jsonl", tasks, suite)
    return out


def _from_run_dir(run_dir: Path) -> tuple[str, Path, Any]:
    """The architecture, final checkpoint and config of a finished `siftbench run`."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise StageError(f"{run_dir}: no config.yaml; is this a `siftbench run` directory?")
    try:
        cfg = OmegaConf.load(config_file)
    except Exception as e:  # yaml and OmegaConf raise several types for a damaged file
        raise StageError(f"{config_file}: unreadable ({' '.join(str(e).split())}); it is the run's config, "
                         "written by `siftbench run`: rerun the run into a new folder") from None
    results = run_dir / "results.json"
    if results.is_file():
        try:
            model = json.loads(results.read_text()).get("model") or {}
        except (ValueError, AttributeError) as e:
            raise StageError(f"{results}: not a results file ({e}); delete it and rerun `siftbench run` with the "
                             "same arguments to evaluate again") from None
        if model.get("arch") and model.get("checkpoint"):
            checkpoint = Path(model["checkpoint"])
            return model["arch"], checkpoint if checkpoint.is_absolute() else run_dir / checkpoint, cfg
    checkpoints = sorted(run_dir.glob("train/*/checkpoints/epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise StageError(f"{run_dir}: no train/*/checkpoints/epoch_N.pt; the run has not finished training")
    return str(cfg.scale.model), checkpoints[-1], cfg

