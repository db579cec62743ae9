"""``siftbench submit``: check every run first, then write them all in one transaction (or none)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import store
from .validate import (
    CheckedRun,
    Reevaluator,
    ScaleChecker,
    SubmissionRefused,
    SuiteVersions,
    canonical_json,
    check_name,
    check_run,
    check_track,
    harness_reevaluate,
    pool_uid_index,
    sha256_text,
    shipped_check_scale,
    shipped_suite_versions,
)

HARNESS = "harness"  # reevaluate=HARNESS: re-run siftbench's own evaluation (the default)


@dataclass
class SubmitResult:
    """What a submit did: which runs it added, which were already there, and what to know about them."""

    name: str
    track: str
    scale: str
    board_id: int
    submission_id: int
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.name!r} on {self.scale}/{self.track}: {len(self.added)} run(s) added, "
            f"{len(self.already_present)} already present"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def submit(
    run_dirs: Sequence[str | Path],
    name: str,
    track: str = "filtering",
    store_path: str | Path | None = None,
    pool_root: str | Path | None = None,
    reevaluate: Reevaluator | str | None = HARNESS,
    *,
    suite_root: str | Path | None = None,
    check_scale: ScaleChecker = shipped_check_scale,
    suite_versions: SuiteVersions = shipped_suite_versions,
) -> SubmitResult:
    """Validate the runs (seeds of one entry) and store them; raise SubmissionRefused naming the rule.

    ``reevaluate``: HARNESS re-runs siftbench's evaluation on toy/tiny checkpoints; a callable
    ``(run_dir, results, eval_root) -> {task: score}`` replaces it; None skips it (the entry is shown as not
    re-evaluated). Other scales are never re-evaluated (they need a GPU box).
    """
    if not run_dirs:
        raise SubmissionRefused(
            "submit", "results-file", "no run folder given", "pass one or more runs/<name>/"
        )
    name, track = check_name(name), check_track(track)
    store_path = Path(store_path) if store_path is not None else store.default_store_path()
    store.check_store(store_path)  # before validation writes its uid index beside it
    if reevaluate == HARNESS:
        reevaluate = harness_reevaluate
    index_cache = store_path.with_name(store_path.name + "-uid-index")
    checked: dict[str, CheckedRun] = {}
    for run_dir in run_dirs:
        run = check_run(
            run_dir,
            track,
            pool_root=Path(pool_root) if pool_root else None,
            pool_index=lambda root: pool_uid_index(root, index_cache),
            check_scale_fn=check_scale,
            suite_versions=suite_versions,
            reevaluate=reevaluate if callable(reevaluate) else None,
            suite_root=Path(suite_root) if suite_root else None,
        )
        checked.setdefault(run.run_key, run)  # the same run listed twice is one run
    runs = list(checked.values())
    _check_consistent(runs)
    conn = store.connect(store_path)
    try:
        with store.write_transaction(conn):
            return _write(conn, name, track, runs)
    finally:
        conn.close()


def submit_groups(
    groups: Mapping[str, Sequence[str | Path]],
    track: str = "filtering",
    store_path: str | Path | None = None,
    **kwargs: Any,
) -> list[SubmitResult]:
    """Submit several entries, {name: run folders}; used by ``siftbench baselines --submit``."""
    return [submit(dirs, name, track, store_path, **kwargs) for name, dirs in groups.items()]


def _check_consistent(runs: list[CheckedRun]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.board != first.board:
            diff = [k for k, v in vars(run.board).items() if getattr(first.board, k) != v]
            raise SubmissionRefused(
                run.run_dir,
                "consistent-runs",
                f"differs from {first.run_dir} in {diff}",
                "submit runs of one scale, world, pool and suite together; submit others under their own name",
            )
        if run.filter_config_json != first.filter_config_json:
            raise SubmissionRefused(
                run.run_dir,
                "consistent-runs",
                f"its filter config differs from {first.run_dir}'s",
                "seeds of one entry share one filter config; submit the other config under another --name",
            )
    seeds: dict[int, Path] = {}
    for run in runs:
        if run.seed in seeds:
            raise SubmissionRefused(
                run.run_dir,
                "seed-taken",
                f"seed {run.seed} is also the seed of {seeds[run.seed]} (a different run)",
                "each seed of an entry counts once; submit one run per seed",
            )
        seeds[run.seed] = run.run_dir


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(conn: sqlite3.Connection, name: str, track: str, runs: list[CheckedRun]) -> SubmitResult:
    first = runs[0]
    b = first.board
    key = (
        b.scale,
        b.track,
        b.world_version,
        b.world_hash,
        b.pool_hash,
        b.suite_name,
        b.suite_version,
        b.suite_hash,
    )
    conn.execute(
        "INSERT INTO boards (scale, track, world_version, world_hash, pool_hash, pool_size, suite_name, "
        "suite_version, suite_hash, suite_tasks, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (*key[:5], first.results["pool"].get("size"), *key[5:], canonical_json(first.suite_tasks), _now()),
    )
    board_id = conn.execute(
        "SELECT id FROM boards WHERE scale=? AND track=? AND world_version=? AND world_hash=? AND pool_hash=? "
        "AND suite_name=? AND suite_version=? AND suite_hash=?",
        key,
    ).fetchone()[0]
    row = conn.execute(
        "SELECT id, filter_config_sha256 FROM submissions WHERE board_id=? AND name=?", (board_id, name)
    ).fetchone()
    config_sha = sha256_text(first.filter_config_json)
    if row is None:
        submission_id = conn.execute(
            "INSERT INTO submissions (board_id, name, filter_config, filter_config_sha256, filters, created_at) "
            "VALUES (?,?,?,?,?,?)",
            (board_id, name, first.filter_config_json, config_sha, first.filters_json, _now()),
        ).lastrowid
    elif row["filter_config_sha256"] != config_sha:
        raise SubmissionRefused(
            first.run_dir,
            "name-taken",
            f"{name!r} is already on the {b.scale}/{b.track} board with another filter config",
            "choose another --name for this filter config",
        )
    else:
        submission_id = row["id"]
    result = SubmitResult(
        name=name, track=track, scale=b.scale, board_id=board_id, submission_id=submission_id
    )
    for run in runs:
        existing = conn.execute(
            "SELECT r.submission_id, s.name FROM runs r JOIN submissions s ON s.id = r.submission_id "
            "WHERE r.run_key = ?",
            (run.run_key,),
        ).fetchone()
        if existing is not None:
            if existing["submission_id"] != submission_id:
                raise SubmissionRefused(
                    run.run_dir,
                    "run-elsewhere",
                    f"this run is already on the board as {existing['name']!r}",
                    "a run belongs to one entry; submit new runs (other seeds) for a new entry",
                )
            result.already_present.append(str(run.run_dir))
            continue
        taken = conn.execute(
            "SELECT run_name FROM runs WHERE submission_id=? AND seed=?", (submission_id, run.seed)
        ).fetchone()
        if taken is not None:
            raise SubmissionRefused(
                run.run_dir,
                "seed-taken",
                f"{name!r} already has a different run ({taken['run_name']}) for seed {run.seed}",
                "each seed counts once: train the next seed, or submit under another --name",
            )
        _insert_run(conn, submission_id, run)
        result.added.append(str(run.run_dir))
        result.notes += run.notes
    n_seeds = conn.execute("SELECT COUNT(*) FROM runs WHERE submission_id=?", (submission_id,)).fetchone()[0]
    if n_seeds < 3:
        result.notes.append(f"{n_seeds} seed(s) so far: entries are ranked from 3 seeds on")
    if any(not run.reevaluated for run in runs) and b.scale in ("toy", "tiny"):
        result.notes.append("not re-evaluated on submit: the page marks it so")
    return result


def _insert_run(conn: sqlite3.Connection, submission_id: int, run: CheckedRun) -> None:
    r = run.results
    meta = r.get("run", {})
    run_id = conn.execute(
        "INSERT INTO runs (submission_id, run_key, run_name, seed, results_sha256, subset_sha256, subset_size, "
        "subset_unique, average, headline_average, eval_copies_kept, hyperparameters, siftbench_version, "
        "git_revision, reevaluated, reeval_max_abs_diff, results, submitted_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            submission_id,
            run.run_key,
            str(meta.get("name") or run.run_dir.name),
            run.seed,
            run.results_sha256,
            run.subset_sha256,
            run.subset_size,
            run.subset_unique,
            float(r["average"]),
            _float_or_none(r.get("headline_average")),
            run.eval_copies_kept,
            canonical_json(r["scale"]["hyperparameters"]),
            _str_or_none(meta.get("siftbench_version")),
            _str_or_none(meta.get("git_revision")),
            int(run.reevaluated),
            run.reeval_max_abs_diff,
            canonical_json(r),
            _now(),
        ),
    ).lastrowid
    conn.executemany(
        "INSERT INTO task_results (run_id, task, version, type, main_metric, score, metrics) VALUES (?,?,?,?,?,?,?)",
        [
            (
                run_id,
                task,
                str(e["version"]),
                _str_or_none(e.get("type")),
                str(e["main_metric"]),
                float(e["score"]),
                canonical_json(e["metrics"]),
            )
            for task, e in r["tasks"].items()
        ],
    )


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
