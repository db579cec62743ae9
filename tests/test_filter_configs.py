"""Every `filter=<name>` composes with Hydra and builds its filters (compositions included): the YAMLs of
configs/filter/ and, for a registered filter without one, its dataclass defaults. Parameters are
type-checked when the filters are built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import FILTERS, Filter, build_filter, default_params
from siftbench.benchmark.core.source import DataCompPool, fill_resources
from siftbench.benchmark.experiment.config import CONFIG_DIR, compose_config, options, to_dict
from siftbench.benchmark.stages.select import plan_from_config

# What a filter's defaults leave for the user to give.
REQUIRED = {"concept_match": ["filter.vocabulary=[circle,square]"]}


class Resources:
    """A pool source's resources, as files a filter can open."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def resource(self, name: str, step: Mapping[str, Any]) -> str:
        return str(self.base / {"eval_root": "eval", "image_targets": "targets.npy",
                                "ground_truth": "ground_truth.parquet"}[name])  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Resources:
    base = tmp_path_factory.mktemp("cfg")
    (base / "eval" / "shapes" / "test").mkdir(parents=True)
    (base / "eval" / "shapes" / "test" / "0.tar").write_bytes(b"")
    np.save(base / "targets.npy", np.ones((2, 4), np.float32))
    pd.DataFrame({"uid": ["00" * 16], "defect": ["clean"], "kind": ["shape"], "shape": ["circle"]}).to_parquet(
        base / "ground_truth.parquet")
    return Resources(base)


@pytest.mark.parametrize("name", options("filter"))
def test_filter_config_builds(name, source):
    cfg = fill_resources(to_dict(compose_config([f"filter={name}", *REQUIRED.get(name, [])]).filter), source)
    plan = plan_from_config(cfg)
    assert plan.steps and all(s.filter.name for s in plan.steps)


def test_every_registered_filter_has_a_config():
    assert set(FILTERS.names()) <= set(options("filter"))


@pytest.mark.parametrize("name", sorted(set(FILTERS.imported()) - {p.stem for p in (CONFIG_DIR / "filter").glob("*.yaml")}))
def test_a_filter_without_a_yaml_gets_its_dataclass_defaults(name):
    cfg = to_dict(compose_config([f"filter={name}"]).filter)
    assert cfg == {"name": name, **default_params(FILTERS.get(name))}


def test_defaults_can_be_overridden_without_a_plus():
    cfg = to_dict(compose_config(["filter=basic", "filter.min_words=4"]).filter)
    assert cfg == {"name": "basic", "language": "en", "min_words": 4, "min_chars": 6, "min_side": 200, "max_aspect": 3.0}
    with pytest.raises(ConfigError, match="min_wrds"):
        compose_config(["filter=basic", "filter.min_wrds=4"])  # a typo is not a new parameter


def step_params(cfg: Mapping[str, Any], step: int | None, keys: tuple[str, ...]) -> dict[str, Any]:
    node = cfg if step is None else cfg["steps"][step]
    return {k: node[k] for k in keys}


@pytest.mark.parametrize(("overrides", "step", "expected"), [
    (["filter=clip_score", "filter.threshold=0.25"], None, {"threshold": 0.25, "fraction": None}),
    (["filter=clip_score", "filter.fraction=0.3"], None, {"threshold": None, "fraction": 0.3}),
    (["filter=dedup_clip", "+filter.steps.2.threshold=0.25"], 2, {"threshold": 0.25, "fraction": None}),
    (["filter=diversity_balance", "filter.size=100"], None, {"size": 100, "fraction": None}),
    (["filter=clip_resample", "+filter.steps.1.size=100"], 1, {"t": 1000, "size": 100, "pool_fraction": None}),
])  # fmt: skip
def test_one_of_alternative_parameters_replaces_the_defaults_of_the_others(overrides, step, expected):
    """A threshold given alone is DataComp's LAION-style rule, although clip_score's config sets a fraction."""
    cfg = to_dict(compose_config(overrides).filter)
    assert step_params(cfg, step, tuple(expected)) == expected
    plan_from_config(cfg)  # a valid filter: exactly one of the alternatives


def test_both_alternatives_given_stay_an_error():
    cfg = to_dict(compose_config(["filter=clip_score", "filter.threshold=0.25", "filter.fraction=0.3"]).filter)
    with pytest.raises(ConfigError, match="give exactly one of threshold= or fraction="):
        plan_from_config(cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (["filter=clip_scor"], "unknown filter 'clip_scor'. Did you mean 'clip_score'"),
    (["scale=tinyy"], "unknown scale 'tinyy'. Did you mean 'tiny'"),
    (["filter=clip_score", "filter.fractoin=0.3"],
     "filter 'clip_score' has no parameter 'fractoin'; did you mean 'fraction'? It takes column, threshold, fraction"),
    (["filter=clip_score", "+filter.fractoin=0.3"], "filter 'clip_score' has no parameter 'fractoin'; did you mean"),
    (["filter=dedup", "filter.steps.1.radus=3"], "filter 'perceptual_dedup' has no parameter 'radus'; did you mean 'radius'"),
    (["filter=dedup_clip", "filter.steps.2.threshold=0.3"],
     "filter 'clip_score': the config does not set 'threshold'; add it with +filter.steps.2.threshold=<value>"),
    (["scale=toy", "scale.lrr=1"], "scale 'toy' has no key 'lrr'; did you mean 'lr'?"),
    (["seeed=1"], "no setting 'seeed'; did you mean 'seed'?"),
    (["filter.=3"], "cannot read the override 'filter.=3'; write key=value"),
])  # fmt: skip
def test_config_mistakes_are_one_line_with_the_nearest_name(overrides, message):
    with pytest.raises(ConfigError) as caught:
        plan_from_config(to_dict(compose_config(overrides).filter))
    assert message in str(caught.value) and "\n" not in str(caught.value) and "search path" not in str(caught.value)


@pytest.mark.parametrize(("override", "message"), [
    ("filter.fraction=abc", "filter 'clip_score': fraction='abc' has type str, expected float | None"),
    ("filter.fraction=true", "filter 'clip_score': fraction=True has type bool, expected float | None"),
    ("filter.column=[a,b]", "filter 'clip_score': column=['a', 'b'] has type list, expected str"),
])  # fmt: skip
def test_ill_typed_parameters_name_the_filter_field_value_and_type(override, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("[", r"\[").replace("]", r"\]")):
        plan_from_config(to_dict(compose_config(["filter=clip_score", override]).filter))


def test_parameters_are_converted_to_their_field_types():
    cfg = to_dict(compose_config(["filter=dedup", "filter.steps.1.radius=8", "filter.steps.1.mirror=false"]).filter)
    dedup = plan_from_config(cfg).steps[1].filter
    assert dedup.radius == 8.0 and isinstance(dedup.radius, float) and dedup.mirror is False
    with pytest.raises(ConfigError, match=r"filter 'perceptual_dedup': mirror='sometimes' has type str, expected bool"):
        plan_from_config({"name": "perceptual_dedup", "mirror": "sometimes"})
    with pytest.raises(ConfigError, match=r"filter 'eval_decontam': tasks='shapes' has type str, expected list\[str\] \| None"):
        plan_from_config({"name": "eval_decontam", "eval_root": "x", "tasks": "shapes"})


def test_clip_dedup_balance_is_the_documented_sequence():
    cfg = to_dict(compose_config(["filter=clip_dedup_balance", "subset_fraction=0.3"]).filter)
    plan = plan_from_config(cfg)
    assert plan.combine == "sequence"
    assert [s.filter.name for s in plan.steps] == ["clip_score", "semantic_dedup", "metaclip_balance"]
    assert plan.steps[0].filter.fraction == 0.3
    assert plan.steps[0].filter.column == "clip_scorer_similarity_score"
    assert plan.steps[1].filter.embedding == "scorer_img"


def test_tuples_and_types_omegaconf_cannot_check(monkeypatch):
    """A plugin's tuple comes back a tuple; a field OmegaConf has no type for (an array) is passed as it is."""

    @dataclass
    class Shapes(Filter):
        names: tuple[str, ...] = ("circle",)
        weights: np.ndarray | None = None
        t: float | None = None

    monkeypatch.setitem(FILTERS._items, "shapes_test", Shapes)
    f = build_filter("shapes_test", {"names": ["square", "star"], "weights": np.ones(2), "t": 3})
    assert f.names == ("square", "star") and np.array_equal(f.weights, np.ones(2)) and f.t == 3.0
    with pytest.raises(ConfigError, match=r"filter 'shapes_test': names=5 has type int, expected tuple\[str, \.\.\.\]"):
        build_filter("shapes_test", {"names": 5})


def test_a_datacomp_pool_fills_what_the_config_gives_and_names_what_it_cannot(tmp_path):
    """On a real pool the eval root comes from eval_root=..., and nothing else can be made up."""
    cfg = to_dict(compose_config(["filter=decontam_clip"]).filter)
    with pytest.raises(ConfigError, match=r"filter 'eval_decontam' needs the eval sets' folder .* pass eval_root="):
        fill_resources(cfg, DataCompPool(tmp_path))
    filled = fill_resources(cfg, DataCompPool(tmp_path, eval_folder=tmp_path / "eval"))
    assert filled["steps"][0]["eval_root"] == str(tmp_path / "eval") and cfg["steps"][0]["eval_root"] is None
    with pytest.raises(ConfigError, match=r"filter 'image_based' needs target embeddings: give it targets=<\.npy"):
        fill_resources(to_dict(compose_config(["filter=image_based_clip"]).filter), DataCompPool(tmp_path))
