"""`siftbench run`: one experiment, every stage, one run directory.

    runs/<name>/config.yaml  subset.npy  subset_stats.json  scores/  shards/  train/  results.json  report.md

Each stage skips work whose output already exists, so rerunning a crashed run resumes it.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from siftbench.benchmark.core.atomic import write_json, write_text
from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.executors import make_executor
from siftbench.benchmark.core.filtering import check_filter_config
from siftbench.benchmark.core.results import SCHEMA_VERSION, ResultsError, load_results, validate_results
from siftbench.benchmark.core.scales import check_scale, resolved_scale
from siftbench.benchmark.core.source import DataCompPool, PoolSource, fill_resources
from siftbench.benchmark.core.uids import file_sha256, read_subset
from siftbench.benchmark.core.versions import library_versions, package_version
from siftbench.benchmark.experiment.config import import_plugins, to_dict
from siftbench.benchmark.experiment.plots import write_filter_plots
from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
from siftbench.benchmark.stages.image_features import compute_image_features
from siftbench.benchmark.stages.reshard import reshard
from siftbench.benchmark.stages.select import plan_from_config, run_filter
from siftbench.benchmark.stages.train import train
from siftbench.benchmark.world import WorldSource
from siftbench.eval_suite import load_suite, summarize, write_eval_results_jsonl

# What results.json records the versions of, beside Python's.
LIBRARIES = ("torch", "open_clip_torch", "webdataset", "numpy", "pandas", "pyarrow", "hydra-core")


def run_name(cfg: Any) -> str:
    return cfg.name or f"{cfg.filter.get('name', 'pipeline')}-{cfg.scale.name}-s{cfg.seed}"


def pool_source(cfg: Any) -> PoolSource:
    """Where the pool comes from: a user's DataComp pool (``pool=...``), or the embedded world (generated once,
    cached) with its scorer."""
    if cfg.pool:
        return DataCompPool(Path(cfg.pool), Path(cfg.eval_root) if cfg.eval_root else None)
    return WorldSource.open(to_dict(cfg.world), to_dict(cfg.scorer), device=cfg.device, eval_root=cfg.eval_root)


def checked_filter_config(cfg: Any) -> dict[str, Any]:
    """The run's filter config, with the user's plugins imported and every step's name and parameters checked."""
    import_plugins(cfg.get("plugins", []))
    filter_cfg = to_dict(cfg.filter)
    check_filter_config(filter_cfg)
    return filter_cfg


def run_experiment(cfg: Any, progress: bool = True) -> Path:
    """Filter -> reshard -> train -> evaluate, in ``runs_dir/<name>/``; returns the run directory.

    Everything a user can get wrong (the folder belongs to another experiment, a filter parameter, a scale
    override, a missing eval set) fails before config.yaml is written and before minutes of generating,
    filtering and training. A finished run (its results.json valid and of this config) is reported as it is.
    """
    timings: dict[str, float] = {}
    run_dir = Path(cfg.runs_dir) / run_name(cfg)
    config_yaml = OmegaConf.to_yaml(cfg)
    check_same_experiment(run_dir, config_yaml)
    say = print if progress else (lambda *a, **k: None)
    if finished_results(run_dir, cfg) is not None:
        say(f"[siftbench] {run_dir.name}: finished already ({run_dir / 'results.json'}); nothing to redo")
        return run_dir

    filter_cfg = checked_filter_config(cfg)
    scale = resolved_scale(to_dict(cfg.scale))
    clock = time.perf_counter()
    source = pool_source(cfg)
    timings["world"] = time.perf_counter() - clock
    suite = load_suite(cfg.eval.name, root=source.eval_root())
    filter_cfg = fill_resources(filter_cfg, source)  # e.g. the oracle on a real pool is refused here
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config_yaml)
    say(f"[siftbench] {run_dir.name}: pool {source.pool_dir}")

    clock = time.perf_counter()
    subset_stats = select_stage(cfg, source, run_dir, filter_cfg)
    timings["filter"] = time.perf_counter() - clock
    say(f"[siftbench] {run_dir.name}: kept {subset_stats['kept']:,} of {subset_stats['pool_size']:,} pairs")

    subset = read_subset(run_dir / "subset.npy")
    clock = time.perf_counter()
    shard_stats = reshard(
        source.pool_dir, subset, run_dir / "shards", seed=int(cfg.seed),
        # webdataset 0.2.86 raises when a process has fewer shards than loader workers.
        min_shards=max(2, int(scale["workers"]) * int(cfg.nproc)), progress=progress,
        # On Ray (executor=ray) reshard's index and write tasks run on the cluster; locally, in this process.
        executor=make_executor(to_dict(cfg.executor)) if cfg.executor.name != "local" else None,
    )
    timings["reshard"] = time.perf_counter() - clock

    clock = time.perf_counter()
    checkpoint = train(run_dir / "shards", scale, run_dir / "train", seed=int(cfg.seed), device=cfg.device,
                       nproc=int(cfg.nproc), progress=progress)
    timings["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tasks = evaluate_checkpoint(scale["model"], checkpoint, suite, device=cfg.device)
    timings["evaluate"] = time.perf_counter() - clock

    summary = summarize(tasks)
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": run_dir.name,
            "seed": int(cfg.seed),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_revision": git_revision(),
            "siftbench_version": package_version("siftbench"),
            "library_versions": library_versions(LIBRARIES),
            "wall_times_s": {k: round(v, 2) for k, v in timings.items()},
        },
        "scale": {"name": cfg.scale.name, "hyperparameters": scale, "comparable": scale["comparable"] and not check_scale(scale, cfg.scale.name)},
        "filter": {"config": to_dict(cfg.filter), "filters": subset_stats.get("filters", [])},
        "subset": {
            "path": "subset.npy",
            "size": len(subset),
            "unique": len(np.unique(subset)),
            "sha256": file_sha256(run_dir / "subset.npy"),
            "missing_from_pool": int(shard_stats.get("missing_from_pool", 0)),
        },
        "pool": source.pool_identity(),
        "world": source.world_identity(),
        "suite": suite.identity(),
        "model": {"arch": scale["model"], "checkpoint": str(Path(checkpoint).relative_to(run_dir.resolve()))
                  if Path(checkpoint).is_relative_to(run_dir.resolve()) else str(checkpoint)},
        "tasks": tasks,
        "average": summary["average"],
        "groups": summary["groups"],
        "headline_average": summary["groups"].get("headline", summary["average"]),
        "diagnostics": subset_stats.get("diagnostics"),
        "oracle_gap_closed": None,
    }
    validate_results(results, str(run_dir / "results.json"))
    write_eval_results_jsonl(run_dir / "eval_results.jsonl", tasks, suite)  # DataComp's shape, for their tools
    write_text(run_dir / "report.md", render_report(results, subset_stats))
    write_json(run_dir / "results.json", results)  # last: the run's completion marker
    say(f"[siftbench] {run_dir.name}: average {results['average']:.3f} -> {run_dir / 'results.json'}")
    return run_dir


# How a run is executed, not what it is: these may change between a run and its resume.
EXECUTION_KEYS = ("executor", "device", "nproc", "runs_dir", "name", "plugins")


def check_same_experiment(run_dir: Path, config_yaml: str) -> None:
    """Stages skip outputs that exist, so a run folder made by another experiment would be reused silently.

    Only a finished stage can be reused: a folder where none finished (a run that failed at once, on a typo)
    is simply taken over, and each stage's own fingerprint guards the partial work in it."""
    previous_path = run_dir / "config.yaml"
    if not previous_path.exists() or not finished_stages(run_dir):
        return
    try:
        previous = yaml.safe_load(previous_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{previous_path}: unreadable ({type(e).__name__}); it records the experiment of the "
                          "finished stages in that folder: restore it, or move the folder away") from None
    changed = [k for k in _flat_diff(previous, yaml.safe_load(config_yaml)) if k.split(".")[0] not in EXECUTION_KEYS]
    if changed:
        shown = ", ".join(changed[:8]) + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
        raise ConfigError(
            f"{run_dir} holds a run of a different experiment ({shown} differ from its config.yaml); its "
            "finished stages would be reused. Pick another name=..., or move that folder away to start over"
        )


def finished_stages(run_dir: Path) -> list[str]:
    """The stages of a run folder whose completion marker is there (each written last, atomically)."""
    markers = {"select": select_finished(run_dir) is not None, "reshard": (run_dir / "shards" / "manifest.json").exists(),
               "train": (run_dir / "train" / "train_stats.json").exists(), "evaluate": (run_dir / "results.json").exists()}
    return [stage for stage, done in markers.items() if done]


def finished_results(run_dir: Path, cfg: Any) -> dict[str, Any] | None:
    """The run's results.json if it is valid and of this config (name, seed, scale, filter and the subset it
    names), else None: evaluated again."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    try:
        results = load_results(path)
    except ResultsError:
        return None
    subset = run_dir / "subset.npy"
    same = (results["run"].get("name") == run_dir.name and results["run"].get("seed") == int(cfg.seed)
            and results["scale"].get("name") == cfg.scale.name and results["filter"].get("config") == to_dict(cfg.filter)
            and subset.is_file() and results["subset"].get("sha256") == file_sha256(subset))
    subset_stats = select_finished(run_dir)
    if not same or subset_stats is None:
        return None
    if not (run_dir / "report.md").exists():  # results.json of a run made before report.md was written first
        write_text(run_dir / "report.md", render_report(results, subset_stats))
    return results


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if a == b else [prefix.rstrip(".")]


def select_stage(cfg: Any, source: PoolSource, run_dir: Path, filter_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write subset.npy + subset_stats.json with the source's diagnostics of the subset and the filter's plots.

    run_filter writes subset_stats.json first, without them; this stage's own stats replace it, atomically
    and last, and only they mark the stage finished: a kill in between reruns the (resumable) filter.
    """
    finished = select_finished(run_dir)
    if finished is not None:
        return finished
    if filter_cfg is None:
        filter_cfg = fill_resources(checked_filter_config(cfg), source)
    plan = plan_from_config(filter_cfg)
    executor = make_executor(to_dict(cfg.executor))
    wanted = [c for s in plan.steps for c in (*s.filter.columns(), *s.filter.embeddings())]
    source.prepare(wanted)
    if any(w.startswith("imagehash_") for w in wanted):
        compute_image_features(source.pool_dir, executor=executor)  # resumable: a no-op once done
    stats = run_filter(source.pool_dir, filter_cfg, run_dir, seed=int(cfg.seed), executor=executor)
    stats["filters"] = plan.describe()
    diagnostics = source.diagnostics(read_subset(run_dir / "subset.npy"))
    if diagnostics is not None:
        stats["diagnostics"] = diagnostics
    # "plots" is this stage's key (run_filter never writes it): its presence marks the stage finished.
    stats["plots"] = [str(p.relative_to(run_dir)) for p in write_filter_plots(run_dir, run_dir / "scores", stats)]
    write_json(run_dir / "subset_stats.json", stats)
    return stats


def select_finished(run_dir: Path) -> dict[str, Any] | None:
    """The select stage's stats if it finished in ``run_dir``: subset.npy, and subset_stats.json as this
    stage writes it (with "plots"), not as run_filter wrote it before."""
    path = run_dir / "subset_stats.json"
    if not (run_dir / "subset.npy").exists() or not path.exists():
        return None
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written atomically, so not ours: select again
    return stats if "plots" in stats else None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def render_report(results: dict[str, Any], subset_stats: dict[str, Any]) -> str:
    lines = [
        f"# {results['run']['name']}",
        "",
        f"Filter `{subset_stats.get('filter')}` kept {subset_stats['kept']:,} of {subset_stats['pool_size']:,} pairs "
        f"({subset_stats['kept_fraction']:.1%}); scale `{results['scale']['name']}`, seed {results['run']['seed']}.",
        "",
        "| task | main metric | score | chance |",
        "|---|---|---|---|",
    ]
    for task, entry in results["tasks"].items():
        chance = entry.get("chance")
        lines.append(f"| {task} | {entry['main_metric']} | {entry['score']:.3f} | "
                     f"{'' if chance is None else f'{chance:.3f}'} |")
    lines += ["", f"**Average** {results['average']:.3f}", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in subset_stats.get("plots", [])]
    for step in subset_stats.get("steps", []):
        dropped = ", ".join(f"{k} {v:,}" for k, v in step["dropped"].items()) or "nothing"
        lines.append(f"- step `{step['step']}`: {step['input']:,} in, {step['kept']:,} kept; dropped {dropped}")
    diag = subset_stats.get("diagnostics")
    if diag:
        # precision per defect = its share of everything removed (how precisely the filter aims at it).
        lines += ["", "## Planted defects (world ground truth)", "",
                  "| defect | planted | removed | recall | precision (share of removed) |", "|---|---|---|---|---|"]
        total = max(int(diag.get("removed") or 0), 1)
        for defect, d in diag.get("defects", {}).items():
            recall = "–" if d["recall"] is None else f"{d['recall']:.2f}"
            lines.append(f"| {defect} | {d['planted']:,} | {d['removed']:,} | {recall} | {d['removed'] / total:.2f} |")
            for variant, v in d.get("by_variant", {}).items():
                vr = "–" if v["recall"] is None else f"{v['recall']:.2f}"
                lines.append(f"| &nbsp;&nbsp;{defect}: {variant} | {v['planted']:,} | {v['removed']:,} | {vr} | "
                             f"{v['removed'] / total:.2f} |")
        extra = {k: v for k, v in diag.items() if k != "defects" and not isinstance(v, dict | list)}
        lines += [""] + [f"- {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"
