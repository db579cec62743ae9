"""Every submission rule refuses a real bad submission, names itself and says how to fix it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from leaderboard_fixtures import (
    FAKES,
    edit_results,
    make_pool,
    make_run,
    pool_uids,
    read_results,
    replace_subset,
    set_score,
)

from siftbench.benchmark.core.uids import UID_DTYPE, sort_uids
from siftbench.leaderboard import cli, submit
from siftbench.leaderboard.validate import SubmissionRefused, shipped_check_scale


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    return make_pool(tmp_path / "pool")


@pytest.fixture()
def run(tmp_path: Path, pool: Path) -> Path:
    return make_run(tmp_path / "runs", pool, "clip", seed=0)


def refused(run_dirs: list[Path] | Path, store: Path, rule: str, track: str = "filtering", name: str = "entry",
            **kwargs) -> SubmissionRefused:  # fmt: skip
    dirs = run_dirs if isinstance(run_dirs, list) else [run_dirs]
    with pytest.raises(SubmissionRefused) as info:
        submit(dirs, name, track, store, **{**FAKES, **kwargs})
    error = info.value
    assert error.rule == rule, str(error)
    assert f"refused by rule '{rule}'" in str(error) and "Fix: " in str(error) and error.fix
    assert not store.exists() or _count(store, "runs") == 0, "a refused submission wrote to the store"
    return error


def _count(store: Path, table: str) -> int:
    with sqlite3.connect(store) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_a_valid_run_is_accepted_and_stored_once(tmp_path, run, pool):
    store = tmp_path / "lb.sqlite"
    first = submit([run], "clip", "filtering", store, pool, **FAKES)
    again = submit([run], "clip", "filtering", store, pool, **FAKES)
    assert first.added == [str(run)] and first.already_present == []
    assert again.added == [] and again.already_present == [str(run)]
    assert _count(store, "runs") == 1 and _count(store, "submissions") == 1
    assert _count(store, "task_results") == len(read_results(run)["tasks"])


# ------------------------------------------------------------------------------------- subset format


def test_unsorted_uids_are_refused(tmp_path, run):
    uids = sort_uids(pool_uids(tmp_path / "pool")[:50])[::-1]
    replace_subset(run, uids)
    error = refused(run, tmp_path / "lb.sqlite", "subset-format")
    assert "not sorted ascending" in error.problem and "write_subset" in error.fix


def test_int64_uids_are_refused(tmp_path, run):
    replace_subset(run, np.arange(40, dtype=np.int64))
    error = refused(run, tmp_path / "lb.sqlite", "subset-format")
    assert "int64" in error.problem


def test_a_pickled_object_array_is_refused_without_unpickling(tmp_path, run):
    marker = tmp_path / "unpickled"
    payload = np.empty(1, dtype=object)
    payload[0] = _Trap(str(marker))
    replace_subset(run, payload, allow_pickle=True)
    error = refused(run, tmp_path / "lb.sqlite", "subset-format")
    assert "never unpickles" in error.problem
    assert not marker.exists(), "the submitted pickle was executed"


class _Trap:
    """Unpickling this creates a file: proof that nothing unpickled the subset."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_file_named_subset_npy_is_refused(tmp_path, run):
    import pickle

    marker = tmp_path / "unpickled"
    (run / "subset.npy").write_bytes(pickle.dumps(_Trap(str(marker))))
    edit_results(run, lambda r: r["subset"].update(sha256="0" * 64))
    refused(run, tmp_path / "lb.sqlite", "subset-format")
    assert not marker.exists()


def test_a_two_dimensional_subset_is_refused(tmp_path, run):
    replace_subset(run, np.zeros((4, 2), dtype=np.uint64))
    refused(run, tmp_path / "lb.sqlite", "subset-format")


def test_uids_outside_the_pool_are_refused_on_the_filtering_track(tmp_path, run, pool):
    inside = pool_uids(pool)[:30]
    outside = np.array([(1, 2), (3, 4)], dtype=UID_DTYPE)
    replace_subset(run, sort_uids(np.concatenate([inside, outside])))
    error = refused(run, tmp_path / "lb.sqlite", "subset-in-pool", pool_root=pool)
    assert "2 of 32 uids are not in pool" in error.problem
    assert "00000000000000010000000000000002" in error.problem and "--track byod" in error.fix
    # Bringing your own data is exactly what the byod track is for.
    result = submit([run], "mine", "byod", tmp_path / "lb.sqlite", **FAKES)
    assert result.added == [str(run)]


def test_a_filtering_submission_needs_a_pool(tmp_path, run):
    edit_results(run, lambda r: r["pool"].update(path=str(tmp_path / "nowhere")))
    error = refused(run, tmp_path / "lb.sqlite", "pool")
    assert "--pool" in error.fix


def test_the_pool_checked_against_must_be_the_recorded_one(tmp_path, run):
    # Another world's pool: same layout, other hash, so the uid check would prove nothing.
    other = make_pool(tmp_path / "other" / "pool", world={"version": "1", "hash": "another"})
    error = refused(run, tmp_path / "lb.sqlite", "pool", pool_root=other)
    assert "has hash another" in error.problem
    # A pool that is not the embedded world is identified by its metadata fingerprint.
    plain = make_pool(tmp_path / "plain" / "pool", world=None)
    worldless = make_run(tmp_path / "runs2", plain, "x", 0, world=None)
    edit_results(worldless, lambda r: r["pool"].update(hash="0" * 64))
    error = refused(worldless, tmp_path / "lb.sqlite", "pool", pool_root=plain)
    assert "fingerprint" in error.problem
    (tmp_path / "pool").rename(tmp_path / "moved")
    assert submit([run], "a", "filtering", tmp_path / "lb.sqlite", tmp_path / "moved", **FAKES).added


def test_a_tampered_subset_is_refused_by_its_sha256(tmp_path, run, pool):
    # A valid, sorted, in-pool subset: only the recorded hash gives it away.
    with open(run / "subset.npy", "wb") as f:
        np.save(f, sort_uids(pool_uids(pool)[:10]), allow_pickle=False)
    error = refused(run, tmp_path / "lb.sqlite", "subset-sha256", pool_root=pool)
    assert "sha256" in error.problem


def test_an_empty_subset_is_refused(tmp_path, run):
    replace_subset(run, np.zeros(0, dtype=UID_DTYPE), record=True)
    error = refused(run, tmp_path / "lb.sqlite", "subset-format")
    assert "no uids" in error.problem


def test_a_subset_size_that_does_not_match_the_file_is_refused(tmp_path, run):
    edit_results(run, lambda r: r["subset"].update(size=r["subset"]["size"] + 1))
    refused(run, tmp_path / "lb.sqlite", "subset-size")


# -------------------------------------------------------------------------------------- eval suite


def test_a_missing_task_is_refused(tmp_path, run):
    def drop(results):
        del results["tasks"]["digits"]
        del results["suite"]["tasks"]["digits"]  # as an evaluation that skipped the task would write it
        results["average"] = sum(t["score"] for t in results["tasks"].values()) / len(results["tasks"])

    edit_results(run, drop)
    error = refused(run, tmp_path / "lb.sqlite", "suite-complete")
    assert "digits" in error.problem


def test_an_older_task_version_is_refused(tmp_path, run):
    def downgrade(results):
        results["tasks"]["shapes"]["version"] = 0
        results["suite"]["tasks"]["shapes"] = 0

    edit_results(run, downgrade)
    error = refused(run, tmp_path / "lb.sqlite", "task-version")
    assert "'shapes' was evaluated at version 0" in error.problem and "version 1" in error.problem


def test_an_unknown_suite_is_refused(tmp_path, run):
    edit_results(run, lambda r: r["suite"].update(name="my-own-suite"))
    refused(run, tmp_path / "lb.sqlite", "suite-complete")


def test_an_old_results_schema_is_refused(tmp_path, run):
    edit_results(run, lambda r: r.update(schema_version=0))
    error = refused(run, tmp_path / "lb.sqlite", "results-schema")
    assert "siftbench evaluate" in error.fix


def test_results_that_are_not_json_are_refused(tmp_path, run):
    (run / "results.json").write_text("{not json")
    refused(run, tmp_path / "lb.sqlite", "results-file")


def test_an_edited_average_is_refused(tmp_path, run):
    edit_results(run, lambda r: r.update(average=r["average"] + 0.05))
    error = refused(run, tmp_path / "lb.sqlite", "task-score")
    assert "not the mean" in error.problem


# -------------------------------------------------------------------------------------------- scale


def test_a_changed_learning_rate_is_refused(tmp_path, run):
    edit_results(run, lambda r: r["scale"]["hyperparameters"].update(lr=1e-3))
    error = refused(run, tmp_path / "lb.sqlite", "scale")
    assert "lr=0.001 (scale 'toy' fixes 0.0005)" in error.problem


def test_the_shipped_scales_are_the_default_reference():
    from siftbench.benchmark.core.scales import load_scale

    toy = load_scale("toy")
    assert shipped_check_scale(toy, "toy") == []
    assert any("lr" in p for p in shipped_check_scale({**toy, "lr": toy["lr"] * 2}, "toy"))
    assert "unknown scale" in " ".join(shipped_check_scale(toy, "no-such-scale"))


def test_an_unknown_scale_is_refused(tmp_path, run):
    edit_results(run, lambda r: r["scale"].update(name="huge"))
    refused(run, tmp_path / "lb.sqlite", "scale")


# ------------------------------------------------------------------------------------ re-evaluation


def test_results_that_the_checkpoint_does_not_reproduce_are_refused(tmp_path, run):
    edit_results(run, lambda r: set_score(r, "shapes", r["tasks"]["shapes"]["score"] + 0.01))
    error = refused(run, tmp_path / "lb.sqlite", "reevaluation")
    assert "shapes: submitted" in error.problem


def test_a_difference_within_the_tolerance_is_accepted(tmp_path, run, pool):
    edit_results(run, lambda r: set_score(r, "shapes", r["tasks"]["shapes"]["score"] + 5e-5))
    result = submit([run], "clip", "filtering", tmp_path / "lb.sqlite", pool, **FAKES)
    assert result.added == [str(run)]


def test_a_checkpoint_outside_the_run_folder_is_refused(tmp_path, run):
    edit_results(run, lambda r: r["model"].update(checkpoint="../../../etc/passwd"))
    refused(run, tmp_path / "lb.sqlite", "checkpoint")


def test_larger_scales_are_not_reevaluated(tmp_path, pool):
    run = make_run(tmp_path / "runs", pool, "big", 0, scale="small")
    calls = []
    result = submit([run], "big", "filtering", tmp_path / "lb.sqlite", pool,
                    **{**FAKES, "reevaluate": lambda d, r: calls.append(d) or {}})  # fmt: skip
    assert result.added and calls == []


# ---------------------------------------------------------------------------------- names and seeds


def test_names_are_any_printable_text_but_not_control_characters(tmp_path, run, pool):
    refused(run, tmp_path / "lb.sqlite", "name", name="evil\x1b[2J")
    refused(run, tmp_path / "lb.sqlite", "name", name="   ")
    refused(run, tmp_path / "lb.sqlite", "track", track="open")
    result = submit([run], "<img src=x onerror=alert(1)>", "filtering", tmp_path / "lb.sqlite", pool, **FAKES)
    assert result.name == "<img src=x onerror=alert(1)>"


def test_seeds_of_one_entry_share_scale_and_filter_config(tmp_path, pool):
    a = make_run(tmp_path / "runs", pool, "a", 0)
    b = make_run(tmp_path / "runs", pool, "b", 1, filter_config={"other": True})
    c = make_run(tmp_path / "runs", pool, "c", 2, scale="small")
    refused([a, b], tmp_path / "lb.sqlite", "consistent-runs")
    refused([a, c], tmp_path / "lb.sqlite", "consistent-runs")


def test_a_name_on_the_board_keeps_its_filter_config(tmp_path, pool):
    store = tmp_path / "lb.sqlite"
    submit([make_run(tmp_path / "runs", pool, "a", 0)], "mine", "filtering", store, pool, **FAKES)
    other = make_run(tmp_path / "runs", pool, "b", 1, filter_config={"fraction": 0.1})
    with pytest.raises(SubmissionRefused) as info:
        submit([other], "mine", "filtering", store, pool, **FAKES)
    assert info.value.rule == "name-taken"


def test_a_seed_counts_once_and_a_run_belongs_to_one_entry(tmp_path, pool):
    store = tmp_path / "lb.sqlite"
    first = make_run(tmp_path / "runs", pool, "a", 0)
    submit([first], "mine", "filtering", store, pool, **FAKES)
    rerun = make_run(tmp_path / "again", pool, "a", 0, scores={"shapes": 0.9, "colours": 0.9, "shape_colour": 0.9,
                                                               "digits": 0.9})  # fmt: skip
    with pytest.raises(SubmissionRefused) as info:
        submit([rerun], "mine", "filtering", store, pool, **FAKES)
    assert info.value.rule == "seed-taken"
    with pytest.raises(SubmissionRefused) as info:
        submit([first], "renamed", "filtering", store, pool, **FAKES)
    assert info.value.rule == "run-elsewhere"
    assert _count(store, "runs") == 1


def test_one_bad_run_refuses_the_whole_submission(tmp_path, pool):
    good = make_run(tmp_path / "runs", pool, "a", 0)
    bad = make_run(tmp_path / "runs", pool, "a", 1)
    edit_results(bad, lambda r: r["scale"]["hyperparameters"].update(global_batch=32))
    store = tmp_path / "lb.sqlite"
    refused([good, bad], store, "scale")


def test_planted_eval_copies_are_flagged_not_refused(tmp_path, pool):
    run = make_run(tmp_path / "runs", pool, "leaky", 0, eval_copies_kept=4)
    result = submit([run], "leaky", "filtering", tmp_path / "lb.sqlite", pool, **FAKES)
    assert any("4 planted copies of eval images" in n for n in result.notes)


def test_the_cli_prints_a_refusal_as_one_line_and_exits_2(tmp_path, run, pool, capsys):
    edit_results(run, lambda r: r["scale"]["hyperparameters"].update(lr=1e-3))
    argv = ["submit", str(run), "--name", "x", "--store", str(tmp_path / "lb.sqlite"), "--pool", str(pool)]
    assert cli.main(argv, submit_kwargs=FAKES) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused by rule 'scale'" in err and "Fix:" in err


def test_the_cli_submits_and_shows(tmp_path, pool, capsys):
    store = tmp_path / "lb.sqlite"
    runs = [str(make_run(tmp_path / "runs", pool, "a", s)) for s in range(3)]
    assert (
        cli.main(["submit", *runs, "--name", "three seeds", "--store", str(store)], submit_kwargs=FAKES) == 0
    )
    assert "3 run(s) added" in capsys.readouterr().out
    assert cli.main(["leaderboard", "show", "--scale", "toy", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "three seeds" in out and "== toy · filtering ==" in out
