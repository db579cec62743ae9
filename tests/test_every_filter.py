"""Every registered filter, run on a small world at its default config (`filter=<name>`): the Decision it
returns keeps its promises, it is a function of its seed, and each of its parameters is in what the
select stage fingerprints. A new filter is covered by being registered; a seeded one is listed in SEEDED."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pool_factory import MINI_WORLD

import siftbench.filters
from siftbench.benchmark.core.filtering import FILTERS, Decision, Filter, SelectContext
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.source import fill_resources
from siftbench.benchmark.core.uids import hex_to_uids, sort_uids
from siftbench.benchmark.experiment.config import compose_config, to_dict
from siftbench.benchmark.stages.image_features import compute_image_features
from siftbench.benchmark.stages.select import plan_from_config
from siftbench.benchmark.world import World, WorldSource, generate_world

# Every filter registered from filters/ (a plugin, or a filter a test registers, brings its own tests).
BUILTIN = [n for n in FILTERS.imported() if FILTERS.get(n).__module__.startswith("siftbench.filters.")]
EMBEDDING_DIM = 16

# What a filter's defaults leave for the user to give.
REQUIRED = {"concept_match": ["filter.vocabulary=[circle,square,triangle,star,digit]"]}
# Filters whose subset depends on the seed, with the overrides under which it must (at their defaults,
# e.g. metaclip_balance's cap is above every concept count of so small a pool, nothing is drawn).
SEEDED = {
    "random": [],
    "oracle": [],
    "diversity_balance": [],
    "metaclip_balance": ["filter.t=5"],
    "exact_dedup": ["filter.keep=random"],
    "perceptual_dedup": ["filter.keep=random"],
    "semantic_dedup": ["filter.keep=random"],
}


class MiniSource:
    """The world as a pool source, except that its scorer is a stand-in (see ``fake_scorer``) and the
    image target is one of the pool's own embeddings."""

    def __init__(self, world: World, targets: Path) -> None:
        self.world = WorldSource(world, {"name": "scorer"})
        self.targets = targets

    def resource(self, name: str, step: Mapping[str, Any]) -> Any:
        return str(self.targets) if name == "image_targets" else self.world.resource(name, step)


def fake_scorer(world: World) -> None:
    """``embeddings/scorer/``: a random vector per picture (a copy shares its source's, plus a little noise,
    so dedup has something to find), its caption's vector and a similarity that favours clean pairs."""
    gt = world.ground_truth().set_index("uid")
    rng = np.random.default_rng(0)
    pool = Pool.open(world.pool_dir)
    folder = world.pool_dir / "embeddings" / "scorer"
    folder.mkdir(parents=True)
    for shard in pool.shard_names:
        uids = pool.read_shard(shard).uids
        hexes = [f"{a:016x}{b:016x}" for a, b in uids.tolist()]
        picture = [gt.at[h, "source_uid"] if gt.at[h, "defect"] in ("exact_duplicate", "near_duplicate") else h
                   for h in hexes]  # fmt: skip
        image = np.stack([np.random.default_rng(int(p[:8], 16)).normal(size=EMBEDDING_DIM) for p in picture])
        image += rng.normal(scale=1e-3, size=image.shape)
        text = image + rng.normal(scale=0.5, size=image.shape)
        clean = (gt.loc[hexes, "defect"] == "clean").to_numpy()
        similarity = rng.normal(0.2, 0.05, len(uids)) + 0.1 * clean
        np.savez(folder / f"{shard}.npz", uid=uids, image=image.astype(np.float16), text=text.astype(np.float16),
                 similarity=similarity.astype(np.float32))  # fmt: skip


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[World, MiniSource]:
    base = tmp_path_factory.mktemp("every-filter")
    world = generate_world(MINI_WORLD, base / "world", workers=1, progress=False)
    fake_scorer(world)
    compute_image_features(world.pool_dir)
    targets = Pool.open(world.pool_dir).read_shard(Pool.open(world.pool_dir).shard_names[0], (), ("scorer_img",))
    np.save(base / "targets.npy", targets.embeddings["scorer_img"][:1].astype(np.float32))
    return world, MiniSource(world, base / "targets.npy")


def build(name: str, source: MiniSource, overrides: Sequence[str] = ()) -> Filter:
    """The filter as `filter=<name>` configures it, with the source's resources filled in."""
    cfg = to_dict(compose_config([f"filter={name}", *REQUIRED.get(name, []), *overrides]).filter)
    assert cfg.get("name") == name and "steps" not in cfg, f"filter={name} must be the filter itself"
    return plan_from_config(fill_resources(cfg, source)).steps[0].filter


def run(f: Filter, pool: Pool, seed: int) -> tuple[np.ndarray, Decision]:
    """Score every shard and select once over the whole pool, as the select stage does; the subset too."""
    batches = [pool.read_shard(s, f.columns(), f.embeddings()) for s in pool.shard_names]
    values = pd.concat([f.score(b) for b in batches], ignore_index=True)
    uids = np.concatenate([b.uids for b in batches])
    assert len(values) == len(uids), "score must return one row per sample"
    decision = f.select(values, uids, SelectContext(seed=seed, pool_size=len(uids)))
    repeats = np.ones(len(uids), dtype=np.int64) if decision.repeats is None else decision.repeats
    return sort_uids(np.repeat(uids[decision.keep], repeats[decision.keep])), decision


def check_decision(decision: Decision, rows: int) -> None:
    keep, reason = decision.keep, np.asarray(decision.reason)
    assert isinstance(keep, np.ndarray) and keep.dtype == bool and keep.shape == (rows,)
    assert reason.shape == (rows,) and np.issubdtype(reason.dtype, np.integer)
    assert ((reason == 0) == keep).all(), "reason 0 means kept, and only kept rows have it"
    assert reason.min(initial=0) >= 0 and reason.max(initial=0) <= len(decision.reason_names)
    assert sum(decision.dropped().values()) == int((~keep).sum())
    assert all(n > 0 for n in decision.dropped().values())
    if decision.repeats is not None:
        repeats = np.asarray(decision.repeats)
        assert repeats.shape == (rows,) and np.issubdtype(repeats.dtype, np.integer)
        assert (repeats[keep] >= 1).all() and (repeats[~keep] == 0).all()
    json.dumps(decision.notes)  # notes go into subset_stats.json


def other_value(value: Any) -> Any:
    """A different value of the same kind (valid or not: only the fingerprint is compared)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list | tuple):
        return type(value)([*value, "other"])
    return "other" if value is None else None


@pytest.mark.parametrize("name", BUILTIN)
def test_every_filter_keeps_the_decision_contract_and_is_deterministic(name, mini):
    world, source = mini
    pool = Pool.open(world.pool_dir)
    f = build(name, source)
    subset, decision = run(f, pool, seed=0)
    check_decision(decision, len(pool))
    assert np.array_equal(subset, run(f, pool, seed=0)[0]), "same seed, same subset"
    if name not in SEEDED:
        assert np.array_equal(subset, run(f, pool, seed=1)[0]), f"{name} depends on the seed: list it in SEEDED"


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_a_seeded_filter_draws_another_subset_with_another_seed(name, mini):
    world, source = mini
    pool = Pool.open(world.pool_dir)
    f = build(name, source, SEEDED[name])
    first, decision = run(f, pool, seed=0)
    check_decision(decision, len(pool))
    assert np.array_equal(first, run(f, pool, seed=0)[0])
    assert not np.array_equal(first, run(f, pool, seed=1)[0])
    assert len(first) and not np.array_equal(np.unique(first), sort_uids(hex_to_uids(world.ground_truth()["uid"])))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_parameter_is_in_the_fingerprint(name, mini):
    """The select stage fingerprints each step's ``describe()``: a parameter missing from it would let a
    run reuse scores or a subset made with another value."""
    f = build(name, mini[1])
    for field in dataclasses.fields(f):
        changed = copy.copy(f)
        setattr(changed, field.name, other_value(getattr(f, field.name)))
        assert changed.describe() != f.describe(), f"{name}.{field.name} is not in describe()"
        assert changed.describe()["params"][field.name] == getattr(changed, field.name)
    assert f.describe()["name"] == name and f.describe()["version"]


def test_every_public_module_of_the_filters_package_is_discovered():
    declared = {p.stem for p in Path(siftbench.filters.__file__).parent.glob("[!_]*.py") if "@register_filter(" in p.read_text()}
    assert declared and declared == {FILTERS.get(name).__module__.rsplit(".", 1)[1] for name in BUILTIN}
