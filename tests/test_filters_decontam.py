"""Eval-set decontamination (reported per task, within 10% of what was planted) and image-based
clustering (DataComp's rule, independent of shard order)."""

from __future__ import annotations

import numpy as np
import pytest
from dup_pool import make_dup_pool

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.filtering import build_filter
from siftbench.benchmark.core.uids import file_sha256, read_subset, uids_to_hex
from siftbench.benchmark.stages.image_features import compute_image_features
from siftbench.benchmark.stages.select import run_filter


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("decontam")
    truth = make_dup_pool(base / "pool", n_shards=3, per_shard=100, copies=4, exact=4, eval_root=base / "eval",
                          eval_per_task=40, eval_copies=12)  # fmt: skip
    compute_image_features(base / "pool")
    return base, truth


def test_contamination_is_reported_per_task_within_ten_percent(pool, tmp_path):
    base, truth = pool
    stats = run_filter(base / "pool", {"name": "eval_decontam", "eval_root": str(base / "eval")}, tmp_path / "out")
    dropped = stats["steps"][0]["dropped"]
    planted = truth["eval_task"].value_counts().to_dict()
    reported = {k.split(":", 1)[1]: v for k, v in dropped.items()}
    for task, n in planted.items():
        assert abs(reported.get(task, 0) - n) <= 0.1 * n, (reported, planted)
    kept = set(uids_to_hex(read_subset(tmp_path / "out" / "subset.npy")))
    removed = truth[~truth["uid"].isin(kept)]
    assert removed["eval_task"].notna().all()  # nothing else removed


def test_each_match_method_finds_its_variant(pool):
    base, truth = pool
    from siftbench.benchmark.core.pool import Pool

    f = build_filter("eval_decontam", {"eval_root": str(base / "eval")})
    frames = [f.score(Pool.open(base / "pool").read_shard(s, (), f.embeddings())) for s in ("00000000", "00000001", "00000002")]
    import pandas as pd

    values = pd.concat(frames, ignore_index=True)
    kinds = truth["kind"].to_numpy()
    match = values["match"].to_numpy()
    assert (match[kinds == "eval_exact"] == 1).all()  # sha256
    assert (match[kinds == "eval_reencode"] == 2).all() and (match[kinds == "eval_flip"] == 2).all()  # thumbnail


def test_sha256_only_misses_reencoded_copies(pool, tmp_path):
    base, truth = pool
    cfg = {"name": "eval_decontam", "eval_root": str(base / "eval"), "thumbnail_radius": None}
    stats = run_filter(base / "pool", cfg, tmp_path / "out")
    assert sum(stats["steps"][0]["dropped"].values()) == (truth["kind"] == "eval_exact").sum()


def test_eval_root_errors_are_actionable(tmp_path):
    with pytest.raises(ConfigError, match="eval_root is not set"):
        build_filter("eval_decontam", {})
    with pytest.raises(ConfigError, match="is not a folder"):
        build_filter("eval_decontam", {"eval_root": str(tmp_path / "nowhere")})
    (tmp_path / "eval" / "shapes" / "test").mkdir(parents=True)
    (tmp_path / "eval" / "shapes" / "test" / "0.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"tasks \['colours'\] not found"):
        build_filter("eval_decontam", {"eval_root": str(tmp_path / "eval"), "tasks": ["colours"]})


def test_image_based_keeps_clusters_near_the_targets(pool, tmp_path):
    base, truth = pool
    from siftbench.benchmark.core.pool import Pool

    pool_ = Pool.open(base / "pool")
    emb = np.concatenate([pool_.read_shard(s, (), ["toy_img"]).embeddings["toy_img"] for s in pool_.shard_names])
    targets = emb[:5].astype(np.float32)
    np.save(tmp_path / "targets.npy", targets)
    cfg = {"name": "image_based", "embedding": "toy_img", "targets": str(tmp_path / "targets.npy"), "n_clusters": 10}
    stats = run_filter(base / "pool", cfg, tmp_path / "w1", executor=LocalExecutor(workers=1, progress=False))
    kept = set(uids_to_hex(read_subset(tmp_path / "w1" / "subset.npy")))
    assert set(truth["uid"][:5]) <= kept  # a target's own sample is in its nearest cluster
    assert 0 < stats["kept"] < 0.7 * len(truth)
    run_filter(base / "pool", cfg, tmp_path / "w2", executor=LocalExecutor(workers=2, progress=False))
    assert file_sha256(tmp_path / "w1" / "subset.npy") == file_sha256(tmp_path / "w2" / "subset.npy")


def test_image_based_targets_must_match_the_embedding(pool, tmp_path):
    base, _ = pool
    np.save(tmp_path / "t.npy", np.ones((3, 5), np.float32))
    with pytest.raises(ConfigError, match=r"shape \(3, 5\); expected \(m, 64\)"):
        run_filter(base / "pool", {"name": "image_based", "embedding": "toy_img", "targets": str(tmp_path / "t.npy")},
                   tmp_path / "out")  # fmt: skip
    with pytest.raises(ConfigError, match="not a file"):
        build_filter("image_based", {"targets": str(tmp_path / "missing.npy")})


def test_world_contamination_per_task_is_within_ten_percent_of_planted(tmp_path):
    """On the toy world (eval_copy planted as exact, re-encoded and flipped copies of eval images), the
    per-task counts the run reports match the ground truth within 10% (relative)."""
    from siftbench.benchmark.world import ensure_world

    world = ensure_world("toy", progress=False)
    compute_image_features(world.pool_dir)
    stats = run_filter(world.pool_dir, {"name": "eval_decontam", "eval_root": str(world.eval_dir)}, tmp_path / "out")
    reported = {k.split(":", 1)[1]: v for k, v in stats["steps"][0]["dropped"].items()}
    truth = world.ground_truth()
    planted = truth.loc[truth["defect"] == "eval_copy", "eval_task"].value_counts().to_dict()
    assert sum(planted.values()) >= 10
    for task in set(planted) | set(reported):
        assert abs(reported.get(task, 0) - planted.get(task, 0)) <= 0.1 * planted.get(task, 0), (reported, planted)
