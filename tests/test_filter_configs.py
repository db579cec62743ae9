"""Every configs/filter/*.yaml composes with Hydra and builds its filters (compositions included)."""

from __future__ import annotations

import numpy as np
import pytest

from siftbench.benchmark.experiment.config import compose_config, options, to_dict
from siftbench.benchmark.stages.select import plan_from_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cfg")
    (base / "eval" / "shapes" / "test").mkdir(parents=True)
    (base / "eval" / "shapes" / "test" / "0.tar").write_bytes(b"")
    np.save(base / "targets.npy", np.ones((2, 4), np.float32))
    return base


@pytest.mark.parametrize("name", [n for n in options("filter") if not n.startswith("oracle")])
def test_filter_config_builds(name, inputs):
    overrides = [f"filter={name}", f"eval_root={inputs / 'eval'}"]
    cfg = to_dict(compose_config(overrides).filter)
    for step in cfg.get("steps", [cfg]):
        if step["name"] == "image_based":
            step["targets"] = str(inputs / "targets.npy")
    plan = plan_from_config(cfg)
    assert plan.steps and all(s.filter.name for s in plan.steps)


def test_clip_dedup_balance_is_the_documented_sequence(inputs):
    cfg = to_dict(compose_config(["filter=clip_dedup_balance", "subset_fraction=0.3"]).filter)
    plan = plan_from_config(cfg)
    assert plan.combine == "sequence"
    assert [s.filter.name for s in plan.steps] == ["clip_score", "semantic_dedup", "metaclip_balance"]
    assert plan.steps[0].filter.fraction == 0.3
    assert plan.steps[0].filter.column == "clip_scorer_similarity_score"
    assert plan.steps[1].filter.embedding == "scorer_img"
