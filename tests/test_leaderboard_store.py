"""The store: versioned schema, forward migrations, and many concurrent submitters on one file."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from leaderboard_fixtures import FAKES, concurrent_submit_worker, make_pool, make_run

from siftbench.leaderboard import store, submit
from siftbench.leaderboard.validate import pool_uid_index


def test_a_new_store_has_the_current_schema(tmp_path):
    conn = store.connect(tmp_path / "lb.sqlite")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "boards", "submissions", "runs", "task_results"} <= tables
    assert store.schema_version(conn) == store.SCHEMA_VERSION
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        store.SCHEMA_VERSION
    )
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_migrations_run_forward_and_keep_the_data(tmp_path):
    path = tmp_path / "lb.sqlite"
    pool = make_pool(tmp_path / "pool")
    submit([make_run(tmp_path / "runs", pool, "a", 0)], "a", "filtering", path, pool, **FAKES)
    step = "ALTER TABLE runs ADD COLUMN reviewer TEXT NOT NULL DEFAULT 'nobody';  -- a later version's change"
    conn = store.connect(path, [*store.MIGRATIONS, step])
    assert store.schema_version(conn) == store.SCHEMA_VERSION + 1
    assert [tuple(r) for r in conn.execute("SELECT run_name, reviewer FROM runs")] == [("a-s0", "nobody")]
    conn.close()
    # Opening it again is a no-op, and an older siftbench refuses rather than misreading it.
    store.connect(path, [*store.MIGRATIONS, step]).close()
    with pytest.raises(store.StoreError, match="written by a newer siftbench"):
        store.connect(path)


def test_a_failed_migration_step_leaves_the_store_as_it_was(tmp_path):
    path = tmp_path / "lb.sqlite"
    store.connect(path).close()
    broken = "CREATE TABLE extra (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(sqlite3.OperationalError):
        store.connect(path, [*store.MIGRATIONS, broken])
    conn = store.connect(path)
    assert store.schema_version(conn) == store.SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    conn.close()


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some notes " * 40)
    with pytest.raises(store.StoreError, match="not a leaderboard store"):
        store.connect(path)


def test_the_store_path_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(store.STORE_ENV, raising=False)
    assert store.default_store_path() == Path("leaderboard.sqlite")
    monkeypatch.setenv(store.STORE_ENV, str(tmp_path / "x.sqlite"))
    assert store.default_store_path() == tmp_path / "x.sqlite"


def test_twenty_concurrent_submits_store_every_run_once(tmp_path):
    """20 submit processes released together on a fresh store, resubmissions included."""
    pool = make_pool(tmp_path / "pool")
    path = tmp_path / "lb.sqlite"
    pool_uid_index(pool, path.with_name(path.name + "-uid-index"))  # what the first submit of a pool builds
    runs = {name: [make_run(tmp_path / "runs", pool, name, seed) for seed in range(3)] for name in "ABCD"}
    jobs = [(name, [run]) for name, dirs in runs.items() for run in dirs]  # 12 distinct runs
    jobs += [("A", runs["A"]), ("B", runs["B"][:2])]  # several seeds at once, all already submitted above
    jobs += [("A", [runs["A"][0]]), ("B", [runs["B"][1]]), ("C", [runs["C"][2]]), ("D", [runs["D"][0]])]
    jobs += [("C", [runs["C"][2]]), ("D", [runs["D"][1], runs["D"][2]])]
    assert len(jobs) == 20

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate `siftbench submit` commands
    barrier = ctx.Barrier(len(jobs))
    procs = []
    for i, (name, dirs) in enumerate(jobs):
        argv = [
            "submit",
            *map(str, dirs),
            "--name",
            f"entry {name}",
            "--store",
            str(path),
            "--pool",
            str(pool),
        ]
        proc = ctx.Process(
            target=concurrent_submit_worker, args=(barrier, argv, str(tmp_path / f"log{i}.txt"))
        )
        proc.start()
        procs.append(proc)
    deadline = time.monotonic() + 120
    for proc in procs:
        proc.join(timeout=max(0.1, deadline - time.monotonic()))
    logs = [(tmp_path / f"log{i}.txt").read_text() for i in range(len(jobs))]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0] * len(jobs), "\n".join(logs)
    assert not any("locked" in log.lower() for log in logs), "\n".join(logs)

    with sqlite3.connect(path) as conn:
        per_entry = dict(
            conn.execute(
                "SELECT s.name, COUNT(*) FROM runs r JOIN submissions s ON s.id = r.submission_id GROUP BY s.name"
            ).fetchall()
        )
        assert per_entry == {f"entry {name}": 3 for name in "ABCD"}
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_key) FROM runs").fetchone() == (12, 12)
        assert conn.execute("SELECT COUNT(*) FROM boards").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM task_results").fetchone()[0] == 12 * 4
    added = sum(int(log.split(" run(s) added")[0].rsplit(" ", 1)[-1]) for log in logs)
    assert added == 12, "\n".join(logs)
