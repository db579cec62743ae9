"""The whole path at `toy` scale, on the toy world: filter -> reshard -> train -> evaluate -> results."""

import json

import numpy as np
import pytest

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.results import load_results
from siftbench.benchmark.core.uids import file_sha256, read_subset
from siftbench.benchmark.experiment.config import compose_config
from siftbench.benchmark.experiment.runner import run_experiment

TOY = ["world=toy", "scale=toy", "scorer.samples_seen=3072", "scorer.global_batch=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("clip_score", "oracle"):
        cfg = compose_config([*TOY, f"filter={name}", f"runs_dir={runs_dir}"])
        out[name] = run_experiment(cfg, progress=False)
    return out


def test_clip_score_run_writes_a_valid_results_file(runs):
    run_dir = runs["clip_score"]
    results = load_results(run_dir)
    assert set(results["tasks"]) == {"shapes", "colours", "shape_colour", "tail_shapes", "retrieval", "digits", "digits_real"}
    for entry in results["tasks"].values():
        assert 0.0 <= entry["score"] <= 1.0
    assert results["average"] == pytest.approx(np.mean([t["score"] for t in results["tasks"].values()]))
    assert results["subset"]["sha256"] == file_sha256(run_dir / "subset.npy")
    assert results["subset"]["size"] == len(read_subset(run_dir / "subset.npy"))
    assert results["scale"]["hyperparameters"]["samples_seen"] == 1536
    assert results["world"]["hash"] == results["pool"]["hash"]
    assert (run_dir / results["model"]["checkpoint"]).is_file()
    train_stats = json.loads((run_dir / "train" / "train_stats.json").read_text())
    assert train_stats["samples_seen_actual"] == 1536


def test_clip_score_keeps_half_and_removes_mostly_misaligned(runs):
    stats = json.loads((runs["clip_score"] / "subset_stats.json").read_text())
    assert stats["kept"] == pytest.approx(stats["pool_size"] / 2, abs=2)
    diag = stats["diagnostics"]
    # Even a scorer trained for a few seconds removes misaligned captions far above the 50% a coin would.
    assert diag["defects"]["misaligned"]["recall"] > 0.6
    assert diag["contamination_kept"]


def test_oracle_draws_only_clean_pairs_to_clip_scores_size(runs):
    stats = json.loads((runs["oracle"] / "subset_stats.json").read_text())
    diag = stats["diagnostics"]
    assert all(d["kept"] == 0 for d in diag["defects"].values())
    assert stats["kept"] == stats["pool_size"] // 2 > diag["subset_unique"]  # every object alike: rare ones repeat
    assert stats["filters"][0]["params"] == {"resample_t": 1, "pool_fraction": 0.5}


def test_oracle_parameters_are_checked(runs):
    cfg = compose_config([*TOY, "filter=oracle", "+filter.t=5", f"runs_dir={runs['oracle'].parent}", "name=bad-oracle"])
    with pytest.raises(ConfigError, match=r"filter=oracle: unknown parameter\(s\) \['t'\]"):
        run_experiment(cfg, progress=False)


def test_report_lists_tasks_and_defects(runs):
    report = (runs["clip_score"] / "report.md").read_text()
    assert "| shapes | acc1 |" in report and "| misaligned |" in report


def test_rerun_resumes_without_redoing_work(runs):
    run_dir = runs["clip_score"]
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "subset.npy", run_dir / "train" / "train_stats.json")}
    cfg = compose_config([*TOY, "filter=clip_score", f"runs_dir={run_dir.parent}"])
    run_experiment(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_run_folder_of_another_experiment_is_refused_not_reused(runs):
    run_dir = runs["clip_score"]
    before = (run_dir / "config.yaml").read_text()
    # Same folder name, another filter fraction: its subset and model must not be passed off as this run's.
    cfg = compose_config([*TOY, "filter=clip_score", "subset_fraction=0.3", f"runs_dir={run_dir.parent}",
                          f"name={run_dir.name}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"different experiment \(filter.fraction, subset_fraction differ"):
        run_experiment(cfg, progress=False)
    assert (run_dir / "config.yaml").read_text() == before
    # How it runs is not what it is: another executor resumes the same run.
    cfg = compose_config([*TOY, "filter=clip_score", "executor=ray", f"runs_dir={run_dir.parent}"])
    assert run_experiment(cfg, progress=False) == run_dir


def test_image_based_on_the_world_aims_at_the_reference_images(runs, tmp_path):
    from siftbench.benchmark.experiment.runner import resolve_pool, select_stage

    cfg = compose_config([*TOY, "filter=image_based_clip", f"runs_dir={tmp_path}"])
    pool_root, world = resolve_pool(cfg)
    stats = select_stage(cfg, pool_root, world, tmp_path)
    targets = np.load(stats["filters"][1]["params"]["targets"])
    reference = len(read_subset_uids(world.reference_dir))
    assert targets.shape == (reference, 128) and np.isfinite(targets).all()  # the scorer's 128-d space
    clip, image_based = stats["steps"]
    assert image_based["kept"] > 0 and stats["kept"] <= clip["kept"]  # an intersection


def read_subset_uids(pool_dir):
    from siftbench.benchmark.core.pool import Pool

    return Pool.open(pool_dir).all_uids()
