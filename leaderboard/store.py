"""The leaderboard store: one SQLite file, a versioned schema, forward migrations, safe concurrent writes.

Schema (version 1; ``PRAGMA user_version`` holds the version, ``meta`` repeats it for humans):

    boards       one ranking: scale x track x world x pool x eval suite. Results from different
                 worlds, pools or suites never share a board, so they never share a ranking.
    submissions  one entry on a board: a name, its filter config; several runs (seeds) under it
    runs         one evaluated model (a seed): subset sha256 and size, averages, eval copies kept,
                 siftbench version, whether submit re-evaluated it, the full results.json
    task_results one row per run x task: version, main metric, score, all metrics

A run is keyed by ``run_key`` (sha256 of its canonical results.json and its subset's sha256), so the
same run submitted twice is one row. Writers take the write lock up front (``BEGIN IMMEDIATE``) in WAL
mode with a busy timeout and retry, so concurrent ``siftbench submit`` processes queue instead of
failing with "database is locked".
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from siftbench.benchmark.core.errors import SiftbenchError

DEFAULT_STORE = "leaderboard.sqlite"
STORE_ENV = "SIFTBENCH_LEADERBOARD"
BUSY_TIMEOUT_MS = 30_000
RETRY_SECONDS = 120.0

T = TypeVar("T")


class StoreError(SiftbenchError):
    """The store file is unusable: written by a newer siftbench, not SQLite, or locked for too long."""


# Each entry upgrades the schema from version i to i + 1. Append only: never edit a shipped step,
# since stores in the wild have already run it.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE boards (
        id INTEGER PRIMARY KEY,
        scale TEXT NOT NULL,
        track TEXT NOT NULL CHECK (track IN ('filtering', 'byod')),
        world_version TEXT NOT NULL,          -- '' when the pool is not the embedded world
        world_hash TEXT NOT NULL,
        pool_hash TEXT NOT NULL,
        pool_size INTEGER,
        suite_name TEXT NOT NULL,
        suite_version TEXT NOT NULL,
        suite_hash TEXT NOT NULL,
        suite_tasks TEXT NOT NULL,            -- JSON {task: version}
        created_at TEXT NOT NULL,
        UNIQUE (scale, track, world_version, world_hash, pool_hash, suite_name, suite_version, suite_hash)
    );
    CREATE TABLE submissions (
        id INTEGER PRIMARY KEY,
        board_id INTEGER NOT NULL REFERENCES boards(id),
        name TEXT NOT NULL,
        filter_config TEXT NOT NULL,          -- canonical JSON
        filter_config_sha256 TEXT NOT NULL,
        filters TEXT NOT NULL,                -- JSON [{name, version, params}]
        created_at TEXT NOT NULL,
        UNIQUE (board_id, name)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        submission_id INTEGER NOT NULL REFERENCES submissions(id),
        run_key TEXT NOT NULL UNIQUE,
        run_name TEXT NOT NULL,
        seed INTEGER NOT NULL,
        results_sha256 TEXT NOT NULL,
        subset_sha256 TEXT NOT NULL,
        subset_size INTEGER NOT NULL,
        subset_unique INTEGER,
        average REAL NOT NULL,
        headline_average REAL,
        eval_copies_kept INTEGER,             -- NULL when the pool is not the embedded world
        hyperparameters TEXT NOT NULL,        -- JSON, as checked against the scale
        siftbench_version TEXT,
        git_revision TEXT,
        reevaluated INTEGER NOT NULL,         -- 1 when submit re-ran the eval and it matched
        reeval_max_abs_diff REAL,
        results TEXT NOT NULL,                -- the submitted results.json, canonical JSON
        submitted_at TEXT NOT NULL,
        UNIQUE (submission_id, seed)
    );
    CREATE TABLE task_results (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        task TEXT NOT NULL,
        version TEXT NOT NULL,
        type TEXT,
        main_metric TEXT NOT NULL,
        score REAL NOT NULL,
        metrics TEXT NOT NULL,                -- JSON
        PRIMARY KEY (run_id, task)
    );
    CREATE INDEX runs_by_submission ON runs(submission_id);
    CREATE INDEX submissions_by_board ON submissions(board_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
SQLITE_HEADER = b"SQLite format 3\x00"


def default_store_path() -> Path:
    """``$SIFTBENCH_LEADERBOARD`` if set, else ``leaderboard.sqlite`` in the current directory."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def retry_busy(fn: Callable[[], T], seconds: float = RETRY_SECONDS) -> T:
    """Call ``fn`` until it stops failing with SQLITE_BUSY; past ``seconds`` raise a StoreError saying so.

    busy_timeout covers most waits, but SQLite returns BUSY at once in a few cases (a WAL switch, a
    read transaction that must upgrade), so the caller retries with jittered backoff.
    """
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                if _is_busy(e):
                    raise StoreError(
                        f"leaderboard store stayed locked for {seconds:.0f} s ({e}); another process holds it "
                        "open in a long write: wait for it to finish, then retry"
                    ) from None
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)


def check_store(path: str | Path) -> None:
    """Raise StoreError if ``path`` cannot become or be a store (a folder, a file of another kind); writes
    nothing, so a submission can be refused for it before anything is validated or cached."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(
            f"leaderboard store {path} is a folder; pass a file path such as {path / DEFAULT_STORE}"
        )
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:  # an empty file is an empty database to SQLite
            raise StoreError(f"{path}: not a leaderboard store (not an SQLite file); pass another --store path")


def connect(path: str | Path, migrations: Sequence[str] = MIGRATIONS) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path`` and bring its schema up to date."""
    path = Path(path)
    check_store(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a leaderboard store ({e}); pass another --store path") from None
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn, migrations, where=str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS, where: str = "store") -> int:
    """Apply the missing migration steps, each in its own write transaction; return the final version."""
    target = len(migrations)
    current = schema_version(conn)
    if current > target:
        raise StoreError(
            f"{where}: schema version {current} was written by a newer siftbench (this one reads up to "
            f"{target}); upgrade siftbench, or point --store at another file"
        )
    while current < target:
        with write_transaction(conn):
            # Another process may have migrated between our read and our lock: re-read under the lock.
            current = schema_version(conn)
            if current >= target:
                break
            for statement in _statements(migrations[current]):
                conn.execute(statement)
            current += 1
            conn.execute(f"PRAGMA user_version = {current}")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(current),),
            )
    return current


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT our transaction first; split the script so each step stays atomic.
    # Migration steps keep '--' for comments only (never inside a string literal).
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    buffer = ""
    for piece in text.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n\t;"):
                yield buffer.strip()
            buffer = ""
    if buffer.strip(" \n\t;"):
        raise StoreError(f"migration step ends in an incomplete statement: {buffer.strip()[:80]!r}")


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (retried while busy) ... COMMIT, or ROLLBACK on any error."""
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    retry_busy(lambda: conn.execute("COMMIT"))
