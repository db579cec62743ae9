"""Filtering as two stages: score (a map over metadata shards) and select (one global reduce).

A filter config is either one filter (``{name: clip_score, fraction: 0.3}``; every key but ``name`` is a
parameter, so ``filter.fraction=0.5`` overrides work) or a composition::

    name: clip_then_concepts
    combine: sequence          # sequence | intersection | union
    steps:
      - {name: clip_score, fraction: 0.5}
      - {name: concept_match, vocabulary: [...]}

In a sequence each step selects among the survivors of the previous one; intersection and union let
every step see the whole pool. Score files are uid-keyed Arrow files, one per (step, shard), written
atomically, so a rerun skips the shards already scored. They are a cache of the config: ``stage.json``
records what made them (every step's parameters and version, combine, seed, the pool's identity), and a
run with anything else deletes them and starts over (``core.stage``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import ConfigError, PoolError
from siftbench.benchmark.core.executors import Executor, LocalExecutor
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, build_filter
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.stage import STAGE_FILE, fingerprint, stage_folder
from siftbench.benchmark.core.uids import UID_DTYPE, write_subset

COMBINE_MODES = ("sequence", "intersection", "union")
STAGE_VERSION = 1  # bump whenever score files or the selection change for the same filters, pool and seed
OUTPUTS = ("scores", "subset.npy", "subset_stats.json")


@dataclass
class Step:
    index: int
    filter: Filter

    @property
    def id(self) -> str:
        return f"{self.index}_{self.filter.name}"


@dataclass
class FilterPlan:
    label: str
    combine: str
    steps: list[Step]

    def describe(self) -> list[dict[str, Any]]:
        return [s.filter.describe() for s in self.steps]


def plan_from_config(cfg: Mapping[str, Any]) -> FilterPlan:
    """Turn a filter config (one filter, or ``steps`` + ``combine``) into filter instances."""
    cfg = dict(cfg)
    if "steps" not in cfg:
        name = cfg.pop("name", None)
        if not name:
            raise ConfigError("filter config needs a 'name' (e.g. filter=clip_score) or a list of 'steps'")
        return FilterPlan(label=name, combine="sequence", steps=[Step(0, build_filter(name, cfg))])
    combine = cfg.get("combine", "sequence")
    if combine not in COMBINE_MODES:
        raise ConfigError(f"filter combine={combine!r}; choose one of {COMBINE_MODES}")
    steps = []
    for i, step_cfg in enumerate(cfg["steps"]):
        step_cfg = dict(step_cfg)
        name = step_cfg.pop("name", None)
        if not name:
            raise ConfigError(f"filter step {i} has no 'name'")
        steps.append(Step(i, build_filter(name, step_cfg)))
    if not steps:
        raise ConfigError("filter config has an empty 'steps' list")
    return FilterPlan(label=cfg.get("name", "+".join(s.filter.name for s in steps)), combine=combine, steps=steps)


def score_pool(pool: Pool, plan: FilterPlan, scores_dir: Path, executor: Executor | None = None) -> None:
    """Map every step's ``score`` over the pool's shards; skip (step, shard) outputs that already exist."""
    columns: list[str] = []
    embeddings: list[str] = []
    for step in plan.steps:
        pool.check_requirements(f"filter {step.filter.name!r}", step.filter.columns(), step.filter.embeddings())
        columns += [c for c in step.filter.columns() if c not in columns]
        embeddings += [e for e in step.filter.embeddings() if e not in embeddings]
    executor = executor or LocalExecutor()
    work = partial(_score_shard, pool, plan.steps, Path(scores_dir), tuple(columns), tuple(embeddings))
    executor.map(work, pool.shard_names, desc="score")


def _score_shard(
    pool: Pool, steps: list[Step], scores_dir: Path, columns: tuple[str, ...], embeddings: tuple[str, ...], shard: str
) -> None:
    todo = [s for s in steps if not (scores_dir / s.id / f"{shard}.arrow").exists()]
    if not todo:
        return
    batch = pool.read_shard(shard, columns, embeddings)
    for step in todo:
        values = step.filter.score(batch)
        if len(values) != len(batch):
            raise RuntimeError(f"filter {step.filter.name!r} returned {len(values)} rows for {len(batch)} in {shard}")
        columns = {"uid_hi": batch.uids["f0"], "uid_lo": batch.uids["f1"]}
        columns.update({name: values[name].to_numpy() for name in values.columns})
        table = pa.table(columns)
        with atomic_path(scores_dir / step.id / f"{shard}.arrow") as tmp:
            feather.write_feather(table, tmp, compression="uncompressed")


def _load_values(pool: Pool, step: Step, scores_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """One step's values over the whole pool, in pool order (shards by name, rows as stored).

    Selection rules must not depend on row order (ties are broken by uid), so the same config and seed
    give the same subset whatever the shard order or worker count.
    """
    files = [scores_dir / step.id / f"{s}.arrow" for s in pool.shard_names]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise PoolError(f"{len(missing)} score files missing, e.g. {missing[0]}; run the score stage first")
    table = pa.concat_tables([feather.read_table(f, memory_map=True) for f in files])
    uids = np.empty(table.num_rows, dtype=UID_DTYPE)
    uids["f0"] = table.column("uid_hi").to_numpy()
    uids["f1"] = table.column("uid_lo").to_numpy()
    return uids, table.drop_columns(["uid_hi", "uid_lo"]).to_pandas()


def select_subset(pool: Pool, plan: FilterPlan, scores_dir: Path, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The global reduce: combine every step's decision into the kept uids, with counts per drop reason."""
    loaded = [_load_values(pool, step, Path(scores_dir)) for step in plan.steps]
    uids = loaded[0][0]
    pool.check_unique_uids(uids)  # a uid listed twice would be selected, and trained on, twice
    for step, (other, _) in zip(plan.steps[1:], loaded[1:], strict=True):
        if not np.array_equal(other, uids):
            raise RuntimeError(f"step {step.id} scored a different set of rows; delete {scores_dir} and rerun")
    ctx = SelectContext(seed=seed, pool_size=len(uids))
    alive = np.zeros(len(uids), dtype=bool) if plan.combine == "union" else np.ones(len(uids), dtype=bool)
    copies = np.ones(len(uids), dtype=np.int64)
    step_stats = []
    for index, (step, (_, values)) in enumerate(zip(plan.steps, loaded, strict=True)):
        if plan.combine != "sequence" or alive.all():  # every row competes: no copies needed
            rows, step_values, step_uids = np.arange(len(uids)), values, uids
        else:
            rows = np.flatnonzero(alive)
            step_values, step_uids = values.iloc[rows].reset_index(drop=True), uids[rows]
        decision: Decision = step.filter.select(step_values, step_uids, ctx)
        keep = np.zeros(len(uids), dtype=bool)
        keep[rows[decision.keep]] = True
        if decision.repeats is not None:
            # Later steps would have to decide what a repeated row's copies mean; only the last may repeat.
            if plan.combine != "sequence" or index != len(plan.steps) - 1:
                raise ConfigError(f"filter {plan.label!r}: step {step.id} ({step.filter.name}) repeats samples, "
                                  "so it must be the last step of a sequence (or the filter on its own)")
            copies[rows] = np.where(decision.keep, decision.repeats, 0)
        alive = alive | keep if plan.combine == "union" else alive & keep
        step_stats.append(
            {
                "step": step.id,
                **step.filter.describe(),
                "input": len(rows),
                "kept": int(decision.keep.sum()),
                "dropped": decision.dropped(),
                **({"notes": decision.notes} if decision.notes else {}),
            }
        )
    stats = {
        "pool_size": len(uids),
        "kept": int(alive.sum()),
        "kept_fraction": float(alive.mean()) if len(uids) else 0.0,
        "combine": plan.combine,
        "steps": step_stats,
    }
    if (copies[alive] != 1).any():
        stats["subset_rows"] = int(copies[alive].sum())  # with repeats: what training draws from
    return np.repeat(uids[alive], copies[alive]), stats


def run_filter(
    pool_root: str | Path,
    filter_cfg: Mapping[str, Any],
    out_dir: str | Path,
    seed: int = 0,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Score and select: writes ``subset.npy`` and ``subset_stats.json`` in ``out_dir``; returns the stats.

    Score files already in ``out_dir`` are reused only if the same filters, seed and pool made them;
    otherwise they are deleted and redone. A second call into the same ``out_dir`` waits for the first.
    """
    out_dir = Path(out_dir)
    pool = Pool.open(pool_root)
    plan = plan_from_config(filter_cfg)
    inputs = {"filters": plan.describe(), "combine": plan.combine, "seed": int(seed), "pool": pool_identity(pool, plan)}
    with stage_folder(out_dir, fingerprint("select", STAGE_VERSION, inputs), on_change="restart", outputs=OUTPUTS,
                      what="scores and a subset"):
        executor = executor or LocalExecutor()
        started = time.perf_counter()
        score_pool(pool, plan, out_dir / "scores", executor)
        scored = time.perf_counter()
        # The global reduce is one task: on Ray it runs on a cluster node next to the scores, not on the driver.
        select = partial(select_subset, pool, plan, out_dir / "scores")
        subset, stats = executor.map(select, [seed], desc="select")[0]
        write_subset(out_dir / "subset.npy", subset)
        stats["seconds"] = {"score": round(scored - started, 3), "select": round(time.perf_counter() - scored, 3)}
        stats["filter"] = plan.label
        write_json(out_dir / "subset_stats.json", stats)
    return stats


def pool_identity(pool: Pool, plan: FilterPlan) -> dict[str, Any]:
    """What the plan reads of the pool, cheaply (a stat and a parquet footer per file, no contents):
    ``Pool.fingerprint()`` (metadata names and row counts), plus inode, size and mtime of every metadata
    file and of the derived files (``embeddings/<key>/``) its steps read. A file rewritten in place gets a
    new mtime, one renamed into place (``atomic_path``) a new inode, so a regenerated pool or recomputed
    embeddings are never passed off as the ones scored before.
    """
    wanted = {name for step in plan.steps for name in (*step.filter.columns(), *step.filter.embeddings())}
    # A derived folder provides clip_<key>_similarity_score and arrays named <key>_<array> (pool.py).
    derived = [d for d in pool.derived_dirs()
               if f"clip_{d.name}_similarity_score" in wanted or any(w.startswith(f"{d.name}_") for w in wanted)]
    files = [*pool.metadata_files, *sorted((pool.root / "metadata").glob("*.npz"))]
    files += [f for d in derived for f in [*sorted(d.glob("*.npz")), d / STAGE_FILE] if f.exists()]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(pool.root)}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return {"metadata": pool.fingerprint(), "derived": [d.name for d in derived], "files": digest.hexdigest()}
