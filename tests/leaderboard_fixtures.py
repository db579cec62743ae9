"""Valid run folders for leaderboard tests, made without training: a tiny pool, a subset, a results.json.

The "checkpoint" of a fixture run is a small JSON file holding the scores it was "evaluated" at, so
``fake_reevaluate`` can stand in for the real evaluator where re-evaluation is not the point.

Run as a script it fills a demo store (synthetic entries, not real results) for the screenshot in docs/leaderboard.md:

    .venv/bin/python tests/leaderboard_fixtures.py demo --store /tmp/demo.sqlite
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.results import SCHEMA_VERSION, validate_results
from siftbench.benchmark.core.uids import file_sha256, hex_to_uids, write_subset
from siftbench.leaderboard.validate import pool_fingerprint

# The fixture's own scale table, so tests do not depend on configs/scale/*.yaml being written yet.
SCALES: dict[str, dict[str, Any]] = {
    "toy": {
        "model": "siftbench-tiny",
        "samples_seen": 4096,
        "global_batch": 64,
        "lr": 5e-4,
        "warmup": 10,
        "beta1": 0.9,
        "beta2": 0.98,
        "eps": 1e-6,
        "weight_decay": 0.2,
    },
    "tiny": {
        "model": "siftbench-tiny",
        "samples_seen": 80_000,
        "global_batch": 128,
        "lr": 5e-4,
        "warmup": 100,
        "beta1": 0.9,
        "beta2": 0.98,
        "eps": 1e-6,
        "weight_decay": 0.2,
    },
    "small": {
        "model": "ViT-B-32",
        "samples_seen": 12_800_000,
        "global_batch": 4096,
        "lr": 5e-4,
        "warmup": 500,
        "beta1": 0.9,
        "beta2": 0.98,
        "eps": 1e-6,
        "weight_decay": 0.2,
    },
}
TASKS = {"shapes": 1, "colours": 1, "shape_colour": 1, "digits": 1}
SUITE = {"name": "world-v1", "version": 1, "hash": "5u17e0", "tasks": TASKS}
WORLD = {"version": "1", "hash": "w0r1d"}


def fixture_check_scale(resolved: Mapping[str, Any], name: str) -> list[str]:
    """What benchmark.scales.check_scale does, against the fixture's own table."""
    if name not in SCALES:
        return [f"unknown scale {name!r}; shipped scales: {sorted(SCALES)}"]
    return [
        f"{k}={resolved.get(k)!r} (scale {name!r} fixes {v!r})"
        for k, v in SCALES[name].items()
        if resolved.get(k) != v
    ]


def fixture_suite_versions(name: str) -> dict[str, int] | None:
    return dict(TASKS) if name == SUITE["name"] else None


def fake_reevaluate(run_dir: Path, results: Mapping[str, Any], eval_root: Path | None) -> dict[str, float]:
    """Read the scores a fixture checkpoint holds (JSON, never a pickle)."""
    checkpoint = run_dir / results["model"]["checkpoint"]
    return {t: float(s) for t, s in json.loads(checkpoint.read_text())["scores"].items()}


# Keyword arguments that make submit() run without the ML stack or shipped scale files.
FAKES: dict[str, Any] = {
    "reevaluate": fake_reevaluate,
    "check_scale": fixture_check_scale,
    "suite_versions": fixture_suite_versions,
}


def make_pool(root: Path, n: int = 200, seed: int = 0, world: Mapping[str, Any] | None = WORLD) -> Path:
    """A pool in DataComp's metadata layout: two parquet shards of random 128-bit hex uids.

    With ``world``, a world.json beside it makes it the pool of that (pretend) embedded world.
    """
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64)
    uids = [f"{hi:016x}{lo:016x}" for hi, lo in words]
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    half = n // 2
    for i, part in enumerate((uids[:half], uids[half:])):
        table = pa.table({"uid": part, "text": [f"a photo of thing {j}" for j in range(len(part))]})
        pq.write_table(table, root / "metadata" / f"{i:08d}.parquet")
    if world:
        (root.parent / "world.json").write_text(
            json.dumps({"content_hash": world["hash"], "version": world["version"]})
        )
    return root


def pool_uids(pool: Path) -> np.ndarray:
    hexes = pa.concat_arrays(
        [
            pq.read_table(f, columns=["uid"]).column("uid").combine_chunks()
            for f in sorted((pool / "metadata").glob("*.parquet"))
        ]
    )
    return hex_to_uids(hexes)


def make_run(
    runs_root: Path,
    pool: Path,
    name: str,
    seed: int = 0,
    *,
    scores: Mapping[str, float] | None = None,
    scale: str = "toy",
    fraction: float = 0.5,
    filter_config: Mapping[str, Any] | None = None,
    world: Mapping[str, Any] | None = WORLD,
    eval_copies_kept: int = 0,
    subset_seed: int | None = None,
) -> Path:
    """Write runs/<name>-s<seed>/ as `siftbench run` would, with a results.json that validates."""
    run_dir = runs_root / f"{name}-s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{seed if subset_seed is None else subset_seed}".encode()))
    everything = pool_uids(pool)
    keep = everything[rng.random(len(everything)) < fraction]
    write_subset(run_dir / "subset.npy", keep)
    if scores is None:
        base = rng.uniform(0.2, 0.6)
        scores = {t: round(float(base + rng.normal(0, 0.05)), 6) for t in TASKS}
    scores = {t: float(s) for t, s in scores.items()}
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "final.pt").write_text(json.dumps({"scores": scores}))
    config = dict(filter_config or {"filter": name, "fraction": fraction})
    tasks = {
        t: {
            "type": "zeroshot_classification",
            "main_metric": "acc1",
            "score": s,
            "metrics": {"acc1": s},
            "chance": 0.1,
            "groups": [],
            "version": TASKS.get(t, 1),
        }
        for t, s in scores.items()
    }
    average = sum(scores.values()) / len(scores)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": run_dir.name,
            "seed": seed,
            "created": "2026-11-26T00:00:00+00:00",
            "git_revision": "abc1234",
            "siftbench_version": "0.1.0",
            "library_versions": {},
            "wall_times_s": {},
        },
        "scale": {"name": scale, "hyperparameters": dict(SCALES[scale])},
        "filter": {
            "config": config,
            "filters": [{"name": config.get("name", name), "version": 1, "params": config}],
        },
        "subset": {
            "path": "subset.npy",
            "size": len(keep),
            "unique": len(keep),
            "sha256": file_sha256(run_dir / "subset.npy"),
            "missing_from_pool": 0,
        },
        "pool": {
            "path": str(pool),
            "size": len(everything),
            "hash": world["hash"] if world else pool_fingerprint(pool),
        },
        "world": dict(world) if world else None,
        "suite": dict(SUITE),
        "tasks": tasks,
        "average": average,
        "headline_average": average,
        "headline_tasks": list(tasks),
        "groups": {},
        "diagnostics": {"contamination_kept": {"shapes": {"planted": 5, "kept": eval_copies_kept}}}
        if world
        else {},
        "oracle_gap_closed": None,
        "model": {"arch": "siftbench-tiny", "checkpoint": "checkpoints/final.pt"},
    }
    validate_results(results)
    write_results(run_dir, results)
    (run_dir / "config.yaml").write_text(f"scale: {scale}\nseed: {seed}\n")
    (run_dir / "subset_stats.json").write_text(json.dumps({"kept": len(keep)}))
    return run_dir


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def write_results(run_dir: Path, results: Mapping[str, Any]) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))


def edit_results(run_dir: Path, edit: Any) -> dict[str, Any]:
    """Apply ``edit(results)`` in place and rewrite results.json (how a bad submission is made)."""
    results = read_results(run_dir)
    edit(results)
    write_results(run_dir, results)
    return results


def set_score(results: dict[str, Any], task: str, score: float) -> None:
    """Change one task's score consistently (metric, score and average), as a doctored file would."""
    entry = results["tasks"][task]
    entry["score"] = entry["metrics"][entry["main_metric"]] = score
    results["average"] = sum(t["score"] for t in results["tasks"].values()) / len(results["tasks"])


def replace_subset(
    run_dir: Path, array: np.ndarray, *, record: bool = True, allow_pickle: bool = False
) -> None:
    """Overwrite subset.npy with ``array`` as given (no sorting); ``record`` updates sha256 and size to match."""
    path = run_dir / "subset.npy"
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)
    if record:

        def fix(results: dict[str, Any]) -> None:
            results["subset"].update(sha256=file_sha256(path), size=len(array), unique=None)

        edit_results(run_dir, fix)


# A demo board for the screenshot: plausible numbers in the shape of ANCHORS.md's prototype.
DEMO_ENTRIES: list[tuple[str, dict[str, Any], float, float, int, int]] = [
    # name, filter config, fraction kept, mean score, seeds, eval copies kept
    ("no_filter", {"name": "no_filter"}, 1.0, 0.30, 3, 0),
    ("random 50%", {"name": "random", "fraction": 0.5}, 0.5, 0.30, 3, 0),
    (
        "basic",
        {"name": "basic", "min_words": 3, "min_chars": 6, "min_side": 200, "max_aspect": 3.0},
        0.7,
        0.33,
        3,
        0,
    ),
    ("CLIP score top 30%", {"name": "clip_score", "model": "scorer", "fraction": 0.3}, 0.3, 0.47, 3, 0),
    ("CLIP score top 50%", {"name": "clip_score", "model": "scorer", "fraction": 0.5}, 0.5, 0.49, 3, 0),
    (
        "CLIP score ∩ pHash dedup",
        {
            "combine": "sequence",
            "steps": [{"name": "clip_score", "fraction": 0.5}, {"name": "phash_dedup", "radius": 4}],
        },
        0.42,
        0.545,
        3,
        0,
    ),
    ("MetaCLIP balance (t=40)", {"name": "metaclip", "t": 40}, 0.35, 0.44, 2, 0),
    ("text-based (leaky)", {"name": "text_based", "concepts": "world"}, 0.45, 0.41, 3, 12),
    ("oracle (clean pairs)", {"name": "oracle"}, 0.5, 0.55, 3, 0),
]


def build_demo_store(store: Path, work: Path) -> Path:
    """Synthetic demo entries (labelled as such in docs/leaderboard.md) for the screenshot in docs/leaderboard.md."""
    from siftbench.leaderboard.submission import submit

    pool = make_pool(work / "pool", n=400)
    rng = np.random.default_rng(7)
    for i, (name, config, fraction, mean, seeds, kept) in enumerate(DEMO_ENTRIES):
        dirs = []
        for seed in range(seeds):
            level = mean + rng.normal(0, 0.006)
            scores = {"shapes": level - 0.15, "colours": min(0.998, 0.95 + rng.normal(0, 0.01)),
                      "shape_colour": level - 0.16, "digits": level - 0.05}  # fmt: skip
            scores = {t: round(float(s + rng.normal(0, 0.005)), 6) for t, s in scores.items()}
            dirs.append(
                make_run(work / "runs", pool, f"demo{i}", seed, scores=scores, scale="tiny", fraction=fraction,
                         filter_config=config, eval_copies_kept=kept, subset_seed=0)
            )  # fmt: skip
        submit(dirs, name, "filtering", store, pool, **FAKES)
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fill a store with synthetic demo entries")
    demo.add_argument("--store", type=Path, required=True)
    demo.add_argument("--work", type=Path, default=None, help="where the demo pool and runs go")
    args = parser.parse_args(argv)
    work = args.work or args.store.with_name(args.store.stem + "-demo")
    build_demo_store(args.store, work)
    print(f"demo store: {args.store}")
    return 0


def concurrent_submit_worker(barrier: Any, argv: list[str], log_path: str) -> None:
    """One `siftbench submit` process for the concurrency test: wait for the others, then submit."""
    import contextlib
    import traceback

    from siftbench.leaderboard import cli

    code = 1
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            barrier.wait(timeout=120)
            code = cli.main(argv, submit_kwargs=FAKES)
        except BaseException:
            traceback.print_exc()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
