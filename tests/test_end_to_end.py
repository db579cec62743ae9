"""The whole path at `toy` scale, on the toy world: filter -> reshard -> train -> evaluate -> results."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from siftbench.benchmark.core.errors import ConfigError, SiftbenchError
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.results import load_results
from siftbench.benchmark.core.source import DataCompPool
from siftbench.benchmark.core.uids import UID_DTYPE, file_sha256, read_subset, write_subset
from siftbench.benchmark.experiment import runner
from siftbench.benchmark.experiment.config import compose_config
from siftbench.benchmark.experiment.runner import pool_source, run_experiment, select_stage
from siftbench.benchmark.perf.bench import make_metadata_pool
from siftbench.benchmark.world import default_cache_dir

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
    # every object alike: rare ones repeat
    assert stats["subset_rows"] == stats["pool_size"] // 2 > diag["subset_unique"] == stats["kept"]
    params = stats["filters"][0]["params"]
    assert params["resample_t"] == 1 and params["pool_fraction"] == 0.5
    assert params["ground_truth"].endswith("ground_truth.parquet")  # handed over by the world, a registered filter


def test_oracle_parameters_are_checked(runs):
    cfg = compose_config([*TOY, "filter=oracle", "+filter.t=5", f"runs_dir={runs['oracle'].parent}", "name=bad-oracle"])
    with pytest.raises(ConfigError, match=r"filter 'oracle' has no parameter 't'"):
        run_experiment(cfg, progress=False)
    assert not (runs["oracle"].parent / "bad-oracle").exists()


@pytest.mark.parametrize(("value", "message"), [("abc", "fraction='abc' has type str"), ("true", "fraction=True has type bool")])
def test_an_ill_typed_filter_parameter_fails_before_anything_runs(tmp_path, value, message):
    worlds = set((default_cache_dir() / "worlds").glob("*"))
    cfg = compose_config(["world=toy", "world.pool_size=1234", "scale=toy", "filter=clip_score",
                          f"filter.fraction={value}", f"runs_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(ConfigError, match=f"filter 'clip_score': {message}, expected float \\| None"):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "clip_score-toy-s0").exists()  # no config.yaml to refuse the corrected command
    assert set((default_cache_dir() / "worlds").glob("*")) == worlds  # no world generated for it


def test_the_oracle_on_a_real_pool_is_refused_before_anything_runs(runs, tmp_path):
    world = pool_source(compose_config(TOY)).world
    cfg = compose_config([*TOY, "filter=oracle", f"pool={world.pool_dir}", f"eval_root={world.eval_dir}",
                          f"runs_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(ConfigError, match="filter 'oracle' needs the embedded world's ground truth, which a real pool"):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "oracle-toy-s0").exists()


def test_a_real_pool_runs_the_same_filter_without_world_diagnostics(runs, tmp_path):
    """The world's pool given as pool=...: the same clip_score subset, its metadata fingerprint as identity."""
    world_run = runs["clip_score"]
    cfg = compose_config([*TOY, "filter=clip_score", f"pool={pool_source(compose_config(TOY)).pool_dir}"])
    source = pool_source(cfg)
    stats = select_stage(cfg, source, tmp_path)
    assert (tmp_path / "subset.npy").read_bytes() == (world_run / "subset.npy").read_bytes()
    assert "diagnostics" not in stats and source.world_identity() is None
    assert source.pool_identity()["hash"] == Pool.open(source.pool_dir).fingerprint()


def test_report_lists_tasks_and_defects(runs):
    report = (runs["clip_score"] / "report.md").read_text()
    assert "| shapes | acc1 |" in report and "| misaligned |" in report


def test_rerun_of_a_finished_run_redoes_nothing(runs):
    """Not even the evaluation: results.json (its created time, its wall times) stays as it was, so the
    leaderboard still takes the run as the one it knows."""
    run_dir = runs["clip_score"]
    outputs = ("subset.npy", "subset_stats.json", "train/train_stats.json", "results.json", "eval_results.jsonl",
               "report.md", "config.yaml")
    before = {name: ((run_dir / name).stat().st_mtime_ns, (run_dir / name).read_bytes()) for name in outputs}
    cfg = compose_config([*TOY, "filter=clip_score", f"runs_dir={run_dir.parent}"])
    assert run_experiment(cfg, progress=False) == run_dir
    assert {name: ((run_dir / name).stat().st_mtime_ns, (run_dir / name).read_bytes()) for name in outputs} == before
    assert min(load_results(run_dir)["run"]["wall_times_s"].values()) >= 0 and load_results(run_dir)["average"] > 0


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
    cfg = compose_config([*TOY, "filter=image_based_clip", f"runs_dir={tmp_path}"])
    source = pool_source(cfg)
    stats = select_stage(cfg, source, tmp_path)
    targets = np.load(stats["filters"][1]["params"]["targets"])
    reference = len(Pool.open(source.world.reference_dir).all_uids())
    assert targets.shape == (reference, 128) and np.isfinite(targets).all()  # the scorer's 128-d space
    clip, image_based = stats["steps"]
    assert image_based["kept"] > 0 and stats["kept"] <= clip["kept"]  # an intersection


# The runner's bookkeeping on a small metadata pool (no world, no training).


def metadata_pool_config(tmp_path, *overrides):
    pool = make_metadata_pool(tmp_path / "pool", 120, files=2)
    return compose_config(["scale=toy", f"pool={pool}", f"eval_root={tmp_path / 'eval'}", f"runs_dir={tmp_path / 'runs'}",
                           "name=r", "filter=clip_score", "filter.column=clip_b32_similarity_score", *overrides])  # fmt: skip


def test_a_folder_where_no_stage_finished_is_taken_over_not_refused(tmp_path):
    """A run that failed before any stage finished left a config.yaml (older siftbench did, on a typo): the
    corrected command is not refused as 'a different experiment'; a finished stage makes it one."""
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(metadata_pool_config(tmp_path, "filter.fraction=0.9")))
    cfg = metadata_pool_config(tmp_path)
    with pytest.raises(SiftbenchError, match="eval task folder"):  # the next thing wrong, not the folder
        run_experiment(cfg, progress=False)
    write_subset(run_dir / "subset.npy", np.zeros(0, UID_DTYPE))
    (run_dir / "subset_stats.json").write_text(json.dumps({"kept": 0, "plots": []}))
    with pytest.raises(ConfigError, match=r"different experiment \(filter.fraction differ"):
        run_experiment(cfg, progress=False)


class KilledHere(BaseException):
    """Stands for a SIGKILL: nothing after the point it is raised at runs."""


def test_a_kill_between_the_filter_and_the_select_stages_stats_resumes_with_diagnostics(tmp_path, monkeypatch):
    """run_filter writes subset_stats.json without the source's diagnostics and the plots; the select stage's
    own stats, written last, mark it finished, so a kill in between is redone on the rerun."""
    cfg = metadata_pool_config(tmp_path)

    class Source(DataCompPool):
        def diagnostics(self, subset):
            return {"removed": 120 - len(subset)}

    source, run_dir = Source(Path(cfg.pool)), tmp_path / "runs" / "r"

    def killed(*args, **kwargs):
        raise KilledHere

    with monkeypatch.context() as patch:
        patch.setattr(runner, "write_filter_plots", killed)
        with pytest.raises(KilledHere):
            select_stage(cfg, source, run_dir)
    assert "diagnostics" not in json.loads((run_dir / "subset_stats.json").read_text())  # run_filter's own
    stats = select_stage(cfg, source, run_dir)
    assert stats["diagnostics"] == {"removed": 120 - stats["kept"]} and "plots" in stats
    assert json.loads((run_dir / "subset_stats.json").read_text()) == stats
    mtime = (run_dir / "subset_stats.json").stat().st_mtime_ns
    assert select_stage(cfg, source, run_dir) == stats and (run_dir / "subset_stats.json").stat().st_mtime_ns == mtime
