"""The oracle: a registered filter that draws the world's clean pairs from the ground truth the world hands it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pool_factory import MINI_WORLD

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, SelectContext
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.source import DataCompPool, fill_resources
from siftbench.benchmark.core.uids import hex_to_uids, isin_uids, read_subset, sort_uids, uids_to_hex
from siftbench.benchmark.stages.select import plan_from_config, run_filter
from siftbench.benchmark.world import DEFECTS, World, WorldSource, generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return generate_world(MINI_WORLD, tmp_path_factory.mktemp("world") / "mini", workers=1, progress=False)


def oracle(world: World, seed: int = 0, **params) -> tuple[np.ndarray, Decision]:
    """The oracle's subset and decision over the whole pool, its ground truth filled in by the world source."""
    cfg = fill_resources({"name": "oracle", **params}, WorldSource(world, {"name": "scorer"}))
    uids = Pool.open(world.pool_dir).all_uids()
    decision = plan_from_config(cfg).steps[0].filter.select(pd.DataFrame(index=range(len(uids))), uids,
                                                            SelectContext(seed=seed, pool_size=len(uids)))
    repeats = decision.repeats if decision.repeats is not None else np.ones(len(uids), dtype=np.int64)
    return sort_uids(np.repeat(uids[decision.keep], repeats[decision.keep])), decision


def test_the_oracle_keeps_exactly_the_clean_pairs_and_counts_each_defect(world: World):
    subset, decision = oracle(world)
    gt = world.ground_truth()
    assert np.array_equal(subset, sort_uids(hex_to_uids(gt.loc[gt["defect"] == "clean", "uid"].to_numpy())))
    planted = gt["defect"].value_counts()
    assert decision.dropped() == {d: int(planted[d]) for d in DEFECTS if d in planted}
    assert decision.repeats is None


def test_resampled_oracle_draws_clean_pairs_evenly_over_their_true_objects(world: World):
    gt = world.ground_truth()
    clean = gt[gt["defect"] == "clean"]
    objects = clean["shape"].where(clean["kind"] == "shape", clean["kind"])
    counts = objects.value_counts()
    t = float(counts.median())
    subset, decision = oracle(world, seed=3, resample_t=t, pool_fraction=0.5)
    assert len(subset) == 150 and len(np.unique(subset)) < 150  # repeats: the tail is drawn more than once
    # Each pair's share of the 150 draws: its object's keep rate t / max(count, t) over the sum of all rates.
    # Systematic sampling gives every pair the floor or the ceiling of its share, so each object is drawn
    # in proportion to its count capped at t.
    rate = (t / np.maximum(counts, t)).reindex(objects).to_numpy()
    share = 150 * rate / rate.sum()
    times = pd.Series(uids_to_hex(subset)).value_counts().reindex(clean["uid"], fill_value=0).to_numpy()
    assert ((times >= np.floor(share)) & (times <= np.ceil(share))).all()
    assert set(objects[times > 0]) == set(counts.index)
    assert decision.dropped()["not_drawn"] == len(clean) - len(np.unique(subset))


def test_the_oracle_is_a_function_of_its_seed(world: World):
    first, _ = oracle(world, seed=3, resample_t=1, pool_fraction=0.5)
    assert np.array_equal(first, oracle(world, seed=3, resample_t=1, pool_fraction=0.5)[0])
    assert not np.array_equal(first, oracle(world, seed=4, resample_t=1, pool_fraction=0.5)[0])
    assert isin_uids(first, oracle(world)[0]).all()  # clean pairs only


def test_the_select_stage_writes_the_oracle_sorted_with_its_repeats(world: World, tmp_path: Path):
    cfg = fill_resources({"name": "oracle", "resample_t": 1, "pool_fraction": 0.5}, WorldSource(world, {"name": "s"}))
    stats = run_filter(world.pool_dir, cfg, tmp_path, seed=1)
    written = read_subset(tmp_path / "subset.npy")
    assert written.tobytes() == oracle(world, seed=1, resample_t=1, pool_fraction=0.5)[0].tobytes()
    assert stats["subset_rows"] == 150 and stats["kept"] == len(np.unique(written))
    assert stats["steps"][0]["params"]["ground_truth"] == str(world.ground_truth_path)


@pytest.mark.parametrize(("params", "message"), [
    ({"resample_t": 0}, r"oracle: resample_t=0\.0 must be a count >= 1"),
    ({"pool_fraction": 0.5}, "pool_fraction draws with repeats, so it needs resample_t"),
    ({"resample_t": 1, "pool_fraction": 1.5}, r"pool_fraction=1\.5 must be in \(0, 1\]"),
    ({"t": 5}, r"filter 'oracle' has no parameter 't'\. It takes resample_t, pool_fraction, ground_truth"),
    ({"resample_t": "many"}, r"filter 'oracle': resample_t='many' has type str, expected float \| None"),
])  # fmt: skip
def test_oracle_parameters_are_checked_like_any_filters(world: World, params: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        plan_from_config(fill_resources({"name": "oracle", **params}, WorldSource(world, {"name": "scorer"})))


def test_the_oracle_on_a_real_pool_is_one_clear_error(world: World):
    with pytest.raises(ConfigError, match=r"filter 'oracle' needs the embedded world's ground truth, which a real "
                                          r"pool \(pool=.*\) does not have: run it on the world"):  # fmt: skip
        fill_resources({"name": "oracle", "resample_t": 1}, DataCompPool(world.pool_dir))
    with pytest.raises(ConfigError, match="oracle: ground_truth is not set"):
        plan_from_config({"name": "oracle"})  # the Python API or `siftbench filter`, with no source to ask
