"""Rankings: seeds aggregated as mean ± std, the leader's ties found with Welch's t-test.

An entry with fewer than ``MIN_SEEDS`` seeds is listed but not ranked: one seed says little when the
seed-to-seed noise (about 0.006 average at DataComp's small scale) is as large as the gaps between
filters. Ranked entries whose averages are not distinguishable from the leader's (two-sided Welch's
t-test over seeds, ``ALPHA``) carry a marker, so a lead inside the noise is not read as a win.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from . import store

ALPHA = 0.05
MIN_SEEDS = 3
RULE_TEXT = (
    f"Entries are ranked by average over the suite's tasks, mean ± std over seeds. "
    f"≈ marks an entry not distinguishable from the leader (two-sided Welch's t-test over seeds, "
    f"alpha {ALPHA}). Entries with fewer than {MIN_SEEDS} seeds are listed but unranked."
)


@dataclass
class Run:
    run_name: str
    seed: int
    average: float
    headline_average: float | None
    subset_size: int
    subset_unique: int | None
    subset_sha256: str
    eval_copies_kept: int | None
    reevaluated: bool
    siftbench_version: str | None
    git_revision: str | None
    submitted_at: str
    tasks: dict[str, float] = field(default_factory=dict)


@dataclass
class Entry:
    id: int
    name: str
    filter_config: Any
    filters: Any
    created_at: str
    runs: list[Run] = field(default_factory=list)
    rank: int | None = None
    tied_with_leader: bool = False
    p_value: float | None = None

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def averages(self) -> list[float]:
        return [r.average for r in self.runs]

    @property
    def mean(self) -> float:
        return fmean(self.averages)

    @property
    def std(self) -> float | None:
        return stdev(self.averages) if len(self.runs) > 1 else None

    @property
    def ranked(self) -> bool:
        return self.n_seeds >= MIN_SEEDS

    @property
    def subset_size(self) -> float:
        return fmean(r.subset_size for r in self.runs)

    @property
    def eval_copies_kept(self) -> int | None:
        known = [r.eval_copies_kept for r in self.runs if r.eval_copies_kept is not None]
        return max(known) if known else None

    @property
    def reevaluated(self) -> bool:
        return all(r.reevaluated for r in self.runs)

    def task_stats(self, task: str) -> tuple[float, float | None]:
        values = [r.tasks[task] for r in self.runs if task in r.tasks]
        if not values:
            return math.nan, None
        return fmean(values), (stdev(values) if len(values) > 1 else None)

    def flags(self, scale: str) -> list[str]:
        out = []
        if not self.ranked:
            out.append(f"unranked ({self.n_seeds} seed{'s' if self.n_seeds != 1 else ''})")
        if self.eval_copies_kept:
            out.append(f"kept {self.eval_copies_kept} eval copies")
        if scale in ("toy", "tiny") and not self.reevaluated:
            out.append("not re-evaluated")
        return out


@dataclass
class Board:
    id: int
    scale: str
    track: str
    world_version: str
    world_hash: str
    pool_hash: str
    pool_size: int | None
    suite_name: str
    suite_version: str
    suite_hash: str
    tasks: list[str]
    entries: list[Entry] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.scale} · {self.track}"

    @property
    def provenance(self) -> str:
        world = f"world {self.world_version} ({self.world_hash[:12]})" if self.world_version else "no world"
        size = f", {self.pool_size} samples" if self.pool_size else ""
        return (
            f"{world} · pool {self.pool_hash[:12]}{size} · suite {self.suite_name} v{self.suite_version} "
            f"({self.suite_hash[:12]})"
        )

    @property
    def leader(self) -> Entry | None:
        return next((e for e in self.entries if e.rank == 1), None)


def welch_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided Welch's t-test p-value; with no spread at all, equal means tie (1.0), others don't (0.0)."""
    from scipy.stats import ttest_ind  # heavy: imported where it is used

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if stdev(a) == 0 and stdev(b) == 0:
        return 1.0 if fmean(a) == fmean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def rank_board(board: Board) -> Board:
    """Order entries (ranked by mean average, then unranked) and set rank, p-value and tie marker."""
    ranked = sorted((e for e in board.entries if e.ranked), key=lambda e: (-e.mean, e.name))
    unranked = sorted((e for e in board.entries if not e.ranked), key=lambda e: (-e.mean, e.name))
    for i, entry in enumerate(ranked, start=1):
        entry.rank = i
    if ranked:
        leader = ranked[0]
        for entry in ranked[1:]:
            entry.p_value = welch_p_value(leader.averages, entry.averages)
            entry.tied_with_leader = not entry.p_value < ALPHA
    board.entries = ranked + unranked
    return board


def load_boards(store_path: str | Path, scale: str | None = None, track: str | None = None) -> list[Board]:
    """Every board in the store (optionally one scale / track), each ranked."""
    path = Path(store_path)
    if not path.is_file():
        raise store.StoreError(
            f"no leaderboard store at {path}; submit a run first (`siftbench submit RUN_DIR --name NAME`) or "
            f"pass --store / set ${store.STORE_ENV}"
        )
    conn = store.connect(path)
    try:
        return _load(conn, scale, track)
    finally:
        conn.close()


def _load(conn: sqlite3.Connection, scale: str | None, track: str | None) -> list[Board]:
    where, args = [], []
    if scale:
        where.append("scale = ?")
        args.append(scale)
    if track:
        where.append("track = ?")
        args.append(track)
    sql = (
        "SELECT * FROM boards"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY scale, track, id"
    )
    boards: dict[int, Board] = {}
    for b in conn.execute(sql, args):
        boards[b["id"]] = Board(
            id=b["id"],
            scale=b["scale"],
            track=b["track"],
            world_version=b["world_version"],
            world_hash=b["world_hash"],
            pool_hash=b["pool_hash"],
            pool_size=b["pool_size"],
            suite_name=b["suite_name"],
            suite_version=b["suite_version"],
            suite_hash=b["suite_hash"],
            tasks=sorted(json.loads(b["suite_tasks"])),
        )
    if not boards:
        return []
    marks = ",".join("?" * len(boards))
    entries: dict[int, Entry] = {}
    for s in conn.execute(f"SELECT * FROM submissions WHERE board_id IN ({marks}) ORDER BY id", list(boards)):
        entry = Entry(
            id=s["id"],
            name=s["name"],
            filter_config=json.loads(s["filter_config"]),
            filters=json.loads(s["filters"]),
            created_at=s["created_at"],
        )
        entries[s["id"]] = entry
        boards[s["board_id"]].entries.append(entry)
    runs: dict[int, Run] = {}
    sql = (
        f"SELECT r.* FROM runs r JOIN submissions s ON s.id = r.submission_id "
        f"WHERE s.board_id IN ({marks}) ORDER BY r.seed"
    )
    for r in conn.execute(sql, list(boards)):
        run = Run(
            run_name=r["run_name"],
            seed=r["seed"],
            average=r["average"],
            headline_average=r["headline_average"],
            subset_size=r["subset_size"],
            subset_unique=r["subset_unique"],
            subset_sha256=r["subset_sha256"],
            eval_copies_kept=r["eval_copies_kept"],
            reevaluated=bool(r["reevaluated"]),
            siftbench_version=r["siftbench_version"],
            git_revision=r["git_revision"],
            submitted_at=r["submitted_at"],
        )
        runs[r["id"]] = run
        entries[r["submission_id"]].runs.append(run)
    sql = (
        f"SELECT t.run_id, t.task, t.score FROM task_results t JOIN runs r ON r.id = t.run_id "
        f"JOIN submissions s ON s.id = r.submission_id WHERE s.board_id IN ({marks})"
    )
    for t in conn.execute(sql, list(boards)):
        runs[t["run_id"]].tasks[t["task"]] = t["score"]
    for board in boards.values():
        board.entries = [e for e in board.entries if e.runs]
        rank_board(board)
    return list(boards.values())
