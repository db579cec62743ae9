"""One stage bookkeeping (core.stage): work in a folder is reused only for the inputs that made it, one
writer at a time per folder, and only the temporaries of writers that died are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.atomic import HOST, atomic_path, temporary_writer
from siftbench.benchmark.core.errors import StageError
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.stage import (
    STAGE_FILE,
    exclusive,
    fingerprint,
    remove_dead_temporaries,
    stage_folder,
)
from siftbench.benchmark.core.uids import hex_to_uids, read_subset, sort_uids, write_subset
from siftbench.benchmark.stages.reshard import reshard
from siftbench.benchmark.stages.select import run_filter

SIFTBENCH = Path(sys.executable).with_name("siftbench")
A, B = "clip_b32_similarity_score", "clip_l14_similarity_score"


def clip_score(column: str) -> dict:
    return {"name": "clip_score", "column": column, "fraction": 0.3}


@pytest.fixture
def pool(tmp_path) -> Path:
    """4 shards x 50 rows with two unrelated score columns, so the two columns select different rows."""
    rng = np.random.default_rng(5)
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    for s in range(4):
        pq.write_table(pa.table({
            "uid": [rng.bytes(16).hex() for _ in range(50)], "text": ["a red circle"] * 50,
            A: rng.random(50).astype(np.float32), B: rng.random(50).astype(np.float32),
        }), root / "metadata" / f"{s:08d}.parquet")
    return root


@pytest.fixture
def spawn():
    """Start ``siftbench`` CLI processes (stderr to a file, to watch while they run); none outlives the test."""
    started: list[subprocess.Popen] = []

    def start(args: list, stderr: Path) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(stderr, "w") as err:
            started.append(subprocess.Popen([str(SIFTBENCH), *map(str, args)], stdout=subprocess.PIPE,
                                            stderr=err, text=True, env=env))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_until(done: Callable[[], bool], procs: list[subprocess.Popen], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert all(p.poll() is None for p in procs), "a process ended while it should have been waiting"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_another_filter_config_in_the_same_folder_is_recomputed(pool, tmp_path, capsys):
    """The issue's stale output: scores were reused by filter name, so B's run returned A's selection."""
    out = tmp_path / "out"
    run_filter(pool, clip_score(A), out)
    with_a = read_subset(out / "subset.npy")
    stats = run_filter(pool, clip_score(B), out)
    run_filter(pool, clip_score(B), tmp_path / "fresh")

    fresh = read_subset(tmp_path / "fresh" / "subset.npy")
    assert not np.array_equal(with_a, fresh), "the two columns must select different rows for this test to mean anything"
    assert np.array_equal(read_subset(out / "subset.npy"), fresh)
    assert stats["steps"][0]["params"]["column"] == B
    assert json.loads((out / "subset_stats.json").read_text())["steps"][0]["params"]["column"] == B
    assert json.loads((out / STAGE_FILE).read_text())["inputs"]["filters"][0]["params"]["column"] == B
    assert "different filters.0.params.column" in capsys.readouterr().err

    # The same config again reuses every score file, silently.
    scores = sorted((out / "scores").rglob("*.arrow"))
    assert len(scores) == 4
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in scores]
    run_filter(pool, clip_score(B), out)
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in scores] == before
    assert "recomputing" not in capsys.readouterr().err


def test_recomputed_embeddings_are_not_passed_off_as_the_scored_ones(pool, tmp_path):
    """A filter on our embeddings (embeddings/<key>/) is rescored when they are recomputed, same shapes and all."""
    def embed(column: str) -> None:  # as the embed stage writes them: one npz per shard, renamed into place
        for shard in Pool.open(pool).shard_names:
            table = pq.read_table(pool / "metadata" / f"{shard}.parquet")
            with atomic_path(pool / "embeddings" / "m" / f"{shard}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, uid=hex_to_uids(table.column("uid")), similarity=table.column(column).to_numpy())

    cfg = clip_score("clip_m_similarity_score")
    embed(A)
    run_filter(pool, cfg, tmp_path / "out")
    first = read_subset(tmp_path / "out" / "subset.npy")
    embed(B)
    run_filter(pool, cfg, tmp_path / "out")
    run_filter(pool, cfg, tmp_path / "fresh")
    assert not np.array_equal(first, read_subset(tmp_path / "fresh" / "subset.npy"))
    assert np.array_equal(read_subset(tmp_path / "out" / "subset.npy"), read_subset(tmp_path / "fresh" / "subset.npy"))


@pytest.mark.parametrize("columns", [(A, A), (A, B)], ids=["same config", "different configs"])
def test_two_filter_processes_into_one_folder(pool, tmp_path, spawn, columns):
    out = tmp_path / "out"
    out.mkdir()
    errors = [tmp_path / f"stderr-{i}" for i in range(2)]
    # This test holds the folder until both processes wait for it, so they really do run into each other.
    with exclusive(out, "select"):
        procs = [spawn(["filter", pool, "--out", out, "filter=clip_score", f"filter.column={column}",
                        "filter.fraction=0.3", "seed=0"], errors[i]) for i, column in enumerate(columns)]
        wait_until(lambda: all(f"in use by pid {os.getpid()} (select)" in e.read_text() for e in errors), procs)
    printed = []
    for proc, error in zip(procs, errors, strict=True):
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, error.read_text()
        printed.append(json.loads(stdout))

    for column in set(columns):
        run_filter(pool, clip_score(column), tmp_path / f"fresh-{column}")
    # Each process reported its own config's selection; the folder holds the one that finished last.
    for column, stats in zip(columns, printed, strict=True):
        assert stats["steps"][0]["params"]["column"] == column
        assert stats["kept"] == json.loads((tmp_path / f"fresh-{column}" / "subset_stats.json").read_text())["kept"]
    last = json.loads((out / "subset_stats.json").read_text())["steps"][0]["params"]["column"]
    assert np.array_equal(read_subset(out / "subset.npy"), read_subset(tmp_path / f"fresh-{last}" / "subset.npy"))
    assert json.loads((out / STAGE_FILE).read_text())["inputs"]["filters"][0]["params"]["column"] == last
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["0_clip_score"]


def test_two_reshard_processes_into_one_folder(tmp_path, spawn):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=3, per_shard=40, seed=2)
    subset = sort_uids(hex_to_uids(uids[:90] + uids[:12] + uids[:5]))  # with repeats
    write_subset(tmp_path / "subset.npy", subset)
    reference = reshard(root, subset, tmp_path / "reference", seed=4, progress=False)

    out = tmp_path / "out"
    out.mkdir()
    errors = [tmp_path / f"stderr-{i}" for i in range(2)]
    with exclusive(out, "reshard"):
        procs = [spawn(["reshard", root, tmp_path / "subset.npy", "--out", out, "--seed", 4], e) for e in errors]
        wait_until(lambda: all(f"in use by pid {os.getpid()} (reshard)" in e.read_text() for e in errors), procs)
    for proc, error in zip(procs, errors, strict=True):
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, error.read_text()
        assert json.loads(stdout)["num_samples"] == reference["num_samples"] == len(subset)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads((tmp_path / "reference" / "manifest.json").read_text())
    assert {name: (out / name).read_bytes() for name in manifest["shards"]} == {
        name: (tmp_path / "reference" / name).read_bytes() for name in manifest["shards"]}
    assert sorted(p.name for p in out.glob("*.tar")) == manifest["shards"]
    assert not list(out.rglob(".*.tmp-*"))


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
        assert temporary_writer(tmp.name) == (HOST, os.getpid())
    assert temporary_writer("shard.tar") is None and temporary_writer(".a.tmp-x") is None

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = dead_pid()
        folder = tmp_path / "out"
        nested = folder / "scores" / "0_x"  # this stage's subfolder
        other = folder / "shards"  # another stage's folder: it cleans its own
        for path in (nested, other):
            path.mkdir(parents=True)
        (other / STAGE_FILE).write_text("{}")
        files = {
            "dead": folder / f".0.tar.tmp-{HOST}-{dead}",
            "dead, named as before hosts": folder / f".1.tar.tmp-{dead}",
            "dead, in a subfolder": nested / f".0.arrow.tmp-{HOST}-{dead}",
            "live": folder / f".2.tar.tmp-{HOST}-{live.pid}",
            "on another machine": folder / f".3.tar.tmp-elsewhere-{dead}",
            "another stage's": other / f".4.tar.tmp-{HOST}-{dead}",
            "not a temporary": folder / f"5.tar.tmp-{dead}",
        }
        for path in files.values():
            path.write_bytes(b"partial")
        removed = remove_dead_temporaries(folder)
        assert sorted(removed) == sorted(files[k] for k in ("dead", "dead, named as before hosts", "dead, in a subfolder"))
        assert {k for k, p in files.items() if p.exists()} == {"live", "on another machine", "another stage's",
                                                              "not a temporary"}

        # The same through a stage: reshard used to delete every temporary in its folder, a live writer's too.
        root = tmp_path / "pool"
        uids = make_tiny_pool(root, n_shards=2, per_shard=10, seed=1)
        out = tmp_path / "shards-out"
        out.mkdir()
        live_file, dead_file = out / f".00000.tar.tmp-{HOST}-{live.pid}", out / f".00001.tar.tmp-{HOST}-{dead}"
        live_file.write_bytes(b"being written")
        dead_file.write_bytes(b"left by a killed run")
        reshard(root, hex_to_uids(uids[:8]), out, seed=0, progress=False)
        assert live_file.read_bytes() == b"being written" and not dead_file.exists()
    finally:
        live.kill()
        live.wait()


def test_one_folder_one_stage_and_refusals_name_what_differs(tmp_path):
    out = tmp_path / "out"

    def claim(stage: str, version: int, seed: int | None = None, **how):
        with stage_folder(out, fingerprint(stage, version, {"seed": seed, "pool_tars": [["a.tar", 10]]}), **how):
            pass

    claim("reshard", 1, seed=1, on_change="refuse")
    claim("reshard", 1, seed=1, on_change="refuse")  # the same inputs: resumed
    with pytest.raises(StageError, match=r"another reshard \(different seed: 1 here, 2 now\); write to a new folder"):
        claim("reshard", 1, seed=2, on_change="refuse")
    with pytest.raises(StageError, match=r"different stage_version: 1 here, 2 now"):
        claim("reshard", 2, seed=1, on_change="refuse")
    with pytest.raises(StageError, match="holds the output of the reshard stage"):
        claim("select", 1, on_change="restart", outputs=("*.tar",))


@pytest.mark.timeout(120)
def test_a_killed_filter_resumes_at_once_and_keeps_its_finished_score_files(pool, tmp_path, capsys):
    """SIGKILL `run_filter` while it writes its third score file: the lock dies with it, the rerun neither
    waits nor rescores the two finished shards, and the half-written file is cleaned up."""
    out = tmp_path / "out"
    die_on_third_shard = f"""
import os, signal, sys
from siftbench.benchmark.stages import select

class Dying:  # writes a few bytes of the score file, then the process is killed
    def write_feather(self, table, path, **kwargs):
        open(path, "wb").write(b"ARROW1")
        os.kill(os.getpid(), signal.SIGKILL)

score, calls = select._score_shard, []
def score_shard(*args):
    calls.append(1)
    if len(calls) == 3:
        select.feather = Dying()
    return score(*args)
select._score_shard = score_shard
select.run_filter({str(pool)!r}, {clip_score(A)!r}, {str(out)!r})
"""
    killed = subprocess.run([sys.executable, "-c", die_on_third_shard], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    finished = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in (out / "scores").rglob("*.arrow")}
    assert len(finished) == 2
    assert len(list((out / "scores").rglob(".*.tmp-*"))) == 1  # the one in flight

    run_filter(pool, clip_score(A), out)
    assert "in use by" not in capsys.readouterr().err
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished} == finished
    assert len(list((out / "scores").rglob("*.arrow"))) == 4 and not list(out.rglob(".*.tmp-*"))
    run_filter(pool, clip_score(A), tmp_path / "fresh")
    assert np.array_equal(read_subset(out / "subset.npy"), read_subset(tmp_path / "fresh" / "subset.npy"))
