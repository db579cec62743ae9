"""`siftbench run`: one experiment, every stage, one run directory.

    runs/<name>/config.yaml  subset.npy  subset_stats.json  scores/  shards/  train/  results.json  report.md

Each stage skips work whose output already exists, so rerunning a crashed run resumes it.
"""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import write_json, write_text
from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.executors import make_executor
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.results import SCHEMA_VERSION, validate_results
from siftbench.benchmark.core.uids import file_sha256, read_subset, write_subset
from siftbench.benchmark.experiment.config import import_plugins, to_dict
from siftbench.benchmark.stages.select import plan_from_config, run_filter


def run_name(cfg: Any) -> str:
    return cfg.name or f"{cfg.filter.get('name', 'pipeline')}-{cfg.scale.name}-s{cfg.seed}"


def resolve_pool(cfg: Any) -> tuple[Path, Any | None]:
    """The pool to filter: a user's DataComp pool, or the embedded world (generated once, cached)."""
    if cfg.pool:
        return Path(cfg.pool), None
    from siftbench.benchmark.world import ensure_world

    world = ensure_world(to_dict(cfg.world))
    return Path(world.pool_dir), world


def run_experiment(cfg: Any, progress: bool = True) -> Path:
    """Filter -> reshard -> train -> evaluate, in ``runs_dir/<name>/``; returns the run directory."""
    from omegaconf import OmegaConf

    timings: dict[str, float] = {}
    run_dir = Path(cfg.runs_dir) / run_name(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = OmegaConf.to_yaml(cfg)
    check_same_experiment(run_dir, config_yaml)
    write_text(run_dir / "config.yaml", config_yaml)
    say = print if progress else (lambda *a, **k: None)

    from siftbench.benchmark.core.scales import check_scale, resolved_scale
    from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
    from siftbench.benchmark.stages.reshard import reshard
    from siftbench.benchmark.stages.train import train
    from siftbench.eval_suite import load_suite, summarize, write_eval_results_jsonl

    clock = time.perf_counter()
    pool_root, world = resolve_pool(cfg)
    timings["world"] = time.perf_counter() - clock
    say(f"[siftbench] {run_dir.name}: pool {pool_root}")
    # A bad scale override or a missing eval set must fail now, not after minutes of filtering and training.
    scale = resolved_scale(to_dict(cfg.scale))
    suite = load_suite(cfg.eval.name, root=eval_root(cfg, world))

    clock = time.perf_counter()
    subset_stats = select_stage(cfg, pool_root, world, run_dir)
    timings["filter"] = time.perf_counter() - clock
    say(f"[siftbench] {run_dir.name}: kept {subset_stats['kept']:,} of {subset_stats['pool_size']:,} pairs")

    subset = read_subset(run_dir / "subset.npy")
    clock = time.perf_counter()
    shard_stats = reshard(
        pool_root, subset, run_dir / "shards", seed=int(cfg.seed),
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
            "library_versions": library_versions(),
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
        "pool": pool_identity(pool_root, world),
        "world": {"version": world.version, "hash": world.content_hash} if world is not None else None,
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
    write_json(run_dir / "results.json", validate_results(results, str(run_dir / "results.json")))
    write_eval_results_jsonl(run_dir / "eval_results.jsonl", tasks, suite)  # DataComp's shape, for their tools
    write_text(run_dir / "report.md", render_report(results, subset_stats))
    say(f"[siftbench] {run_dir.name}: average {results['average']:.3f} -> {run_dir / 'results.json'}")
    return run_dir


# How a run is executed, not what it is: these may change between a run and its resume.
EXECUTION_KEYS = ("executor", "device", "nproc", "runs_dir", "name", "plugins")


def check_same_experiment(run_dir: Path, config_yaml: str) -> None:
    """Stages skip outputs that exist, so a run folder made by another experiment would be reused silently."""
    import yaml

    previous_path = run_dir / "config.yaml"
    if not previous_path.exists():
        return
    previous = yaml.safe_load(previous_path.read_text()) or {}
    changed = [k for k in _flat_diff(previous, yaml.safe_load(config_yaml)) if k.split(".")[0] not in EXECUTION_KEYS]
    if changed:
        shown = ", ".join(changed[:8]) + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
        raise ConfigError(
            f"{run_dir} holds a run of a different experiment ({shown} differ from its config.yaml); its "
            "finished stages would be reused. Pick another name=..., or move that folder away to start over"
        )


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if a == b else [prefix.rstrip(".")]


def select_stage(cfg: Any, pool_root: Path, world: Any | None, run_dir: Path) -> dict[str, Any]:
    """Write subset.npy + subset_stats.json (skipped when both exist); on the world, add diagnostics."""
    stats_path = run_dir / "subset_stats.json"
    if (run_dir / "subset.npy").exists() and stats_path.exists():
        import json

        return json.loads(stats_path.read_text())
    filter_cfg = to_dict(cfg.filter)
    import_plugins(cfg.get("plugins", []))
    if filter_cfg.get("name") == "oracle":
        if world is None:
            raise ConfigError("filter=oracle needs the embedded world's ground truth; it has no meaning on a real pool")
        pool_size = len(Pool.open(pool_root))
        params = {k: v for k, v in filter_cfg.items() if k != "name"}
        known = {"resample_t", "pool_fraction"}
        if unknown := sorted(set(params) - known):
            raise ConfigError(f"filter=oracle: unknown parameter(s) {unknown}; it takes {sorted(known)}")
        fraction = params.get("pool_fraction")
        size = None if fraction is None else max(1, int(pool_size * float(fraction)))
        subset = world.oracle_subset(params.get("resample_t"), size=size, seed=int(cfg.seed))
        write_subset(run_dir / "subset.npy", subset)
        stats: dict[str, Any] = {
            "pool_size": pool_size, "kept": len(subset), "kept_fraction": len(subset) / pool_size,
            "combine": "sequence", "steps": [], "filter": "oracle",
            "filters": [{"name": "oracle", "version": world.version, "params": params}],
        }
    else:
        if world is not None:
            fill_eval_root(filter_cfg, world)
            fill_image_based_targets(filter_cfg, cfg, world)
        plan = plan_from_config(filter_cfg)
        executor = make_executor(to_dict(cfg.executor))
        if world is not None:
            ensure_world_scores(cfg, world, plan)
        if any(e.startswith("imagehash_") for s in plan.steps for e in s.filter.embeddings()):
            from siftbench.benchmark.stages.image_features import compute_image_features

            compute_image_features(pool_root, executor=executor)  # resumable: a no-op once done
        stats = run_filter(pool_root, filter_cfg, run_dir, seed=int(cfg.seed), executor=executor)
        stats["filters"] = plan.describe()
    if world is not None:
        stats["diagnostics"] = world.diagnostics(read_subset(run_dir / "subset.npy"))
    from siftbench.benchmark.experiment.plots import write_filter_plots

    stats["plots"] = [str(p.relative_to(run_dir)) for p in write_filter_plots(run_dir, run_dir / "scores", stats)]
    write_json(stats_path, stats)
    return stats


def fill_eval_root(filter_cfg: dict[str, Any], world: Any) -> None:
    """Steps that match against the eval images (eval_root: null) use the world's eval suite."""
    steps = filter_cfg.get("steps", [filter_cfg])
    for step in steps:
        if "eval_root" in step and step["eval_root"] is None:
            step["eval_root"] = str(world.eval_dir)


def fill_image_based_targets(filter_cfg: dict[str, Any], cfg: Any, world: Any) -> None:
    """image_based steps on the world's scorer embedding (targets: null) aim at the clean reference images."""
    for step in filter_cfg.get("steps", [filter_cfg]):
        if step.get("name") == "image_based" and not step.get("targets"):
            if step.get("embedding") != f"{cfg.scorer.name}_img":
                raise ConfigError(f"image_based: targets is empty and embedding {step.get('embedding')!r} is not the "
                                  f"world scorer's ({cfg.scorer.name}_img); give targets=<.npy of target embeddings>")
            from siftbench.benchmark.world.scorer import reference_image_targets

            step["targets"] = str(reference_image_targets(world, to_dict(cfg.scorer), device=cfg.device))


def ensure_world_scores(cfg: Any, world: Any, plan: Any) -> None:
    """Compute the world scorer's embeddings when a filter asks for them (they are cached in the world)."""
    key = cfg.scorer.name
    wanted = [c for s in plan.steps for c in (*s.filter.columns(), *s.filter.embeddings())]
    if any(w in (f"clip_{key}_similarity_score", f"{key}_img", f"{key}_txt") for w in wanted):
        from siftbench.benchmark.world.scorer import ensure_scorer

        ensure_scorer(world, to_dict(cfg.scorer), device=cfg.device)


def eval_root(cfg: Any, world: Any | None) -> Path:
    if cfg.eval_root:
        return Path(cfg.eval_root)
    if world is None:
        raise ConfigError("a real pool has no built-in eval sets: pass eval_root=<folder with the suite's datasets>")
    return Path(world.eval_dir)


def pool_identity(pool_root: Path, world: Any | None) -> dict[str, Any]:
    """Size and identity of the pool: the world's content hash, or a fingerprint of the metadata."""
    pool = Pool.open(pool_root)
    return {"path": str(pool_root), "size": len(pool),
            "hash": world.content_hash if world is not None else pool.fingerprint()}


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    names = ["torch", "open_clip_torch", "webdataset", "numpy", "pandas", "pyarrow", "hydra-core"]
    return {"python": platform.python_version(), **{n: package_version(n) for n in names}}


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
