"""Concept assignment (caption, zero-shot, cluster) and the two balancing rules."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.filtering import SelectContext, build_filter
from siftbench.benchmark.core.sampling import systematic_counts
from siftbench.benchmark.core.uids import file_sha256, hex_to_uids, read_subset, uids_to_hex
from siftbench.benchmark.stages.select import run_filter
from siftbench.filters.common.concepts import ConceptMatcher

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross"]
COLOURS = ["red", "green", "blue"]
# A long tail: circle is 10x more common than cross.
WEIGHTS = np.array([40, 20, 12, 8, 6, 4], dtype=float)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """4 shards x 250 captions "a <colour> <shape>" with a long-tailed shape distribution, plus 20
    captions naming nothing; toy image embeddings that point at the shape's direction."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("balance") / "pool"
    (root / "metadata").mkdir(parents=True)
    (root / "embeddings" / "toy").mkdir(parents=True)
    directions = np.linalg.qr(rng.normal(size=(16, 16)))[0][: len(SHAPES)]
    rows = []
    for s in range(4):
        shapes = rng.choice(len(SHAPES), size=250, p=WEIGHTS / WEIGHTS.sum())
        colours = rng.choice(len(COLOURS), size=250)
        text = [f"A {COLOURS[c]} {SHAPES[k]}." for k, c in zip(shapes, colours, strict=True)]
        text[:5] = ["nothing to see here"] * 5
        uids = [rng.bytes(16).hex() for _ in range(250)]
        pq.write_table(pa.table({"uid": uids, "text": text}), root / "metadata" / f"{s:08d}.parquet")
        emb = directions[shapes] + rng.normal(0, 0.15, (250, 16))
        np.savez(root / "embeddings" / "toy" / f"{s:08d}.npz", uid=hex_to_uids(uids), image=emb.astype(np.float16))
        rows += [{"uid": u, "text": t, "shape": SHAPES[k]} for u, t, k in zip(uids, text, shapes, strict=True)]
    np.save(root.parent / "classes.npy", directions.astype(np.float32))
    return root, pd.DataFrame(rows)


def kept(out) -> set[str]:
    return set(uids_to_hex(read_subset(out / "subset.npy")))


def test_ascii_fast_path_and_unicode_path_agree():
    vocabulary = ["red car", "cat", "dog"]
    ascii_texts = ["A red\tcar!", "cat,dog", "red  car", "no", "DOG."]
    matcher = ConceptMatcher(vocabulary, "test")
    fast = matcher.match(np.array(ascii_texts, dtype=object))
    slow = matcher.match(np.array([*ascii_texts, "naïve cat"], dtype=object))  # one non-ASCII caption
    keep = slow[0] < len(ascii_texts)
    assert np.array_equal(fast[0], slow[0][keep]) and np.array_equal(fast[1], slow[1][keep])
    assert slow[1][~keep].tolist() == [1]


@pytest.mark.parametrize(("vocabulary", "match"), [
    ([], "empty"),
    (["cat", "Cat "], "duplicates"),
    (["cat", "  ", "dog"], r"entries at \[1\] are empty"),
    (["cat", "..."], "empty after normalisation"),
])  # fmt: skip
def test_bad_vocabulary_is_refused(vocabulary, match):
    with pytest.raises(ConfigError, match=match):
        build_filter("metaclip_balance", {"vocabulary": vocabulary, "t": 10})


def test_metaclip_caps_head_concepts_and_keeps_the_tail(pool, tmp_path):
    root, truth = pool
    stats = run_filter(root, {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60}, tmp_path / "out")
    survivors = truth[truth["uid"].isin(kept(tmp_path / "out"))]
    counts = survivors["shape"].value_counts()
    planted = truth[truth["text"] != "nothing to see here"]["shape"].value_counts()
    for shape, n in planted.items():
        if n <= 60:
            assert counts[shape] == n  # the tail stays whole
        else:
            assert abs(counts[shape] - 60) <= 4 * math.sqrt(60), (shape, counts[shape])  # ~t, binomial noise
    assert stats["steps"][0]["dropped"]["no_concept"] == 20


def test_metaclip_keep_probability_uses_every_matched_entry():
    f = build_filter("metaclip_balance", {"vocabulary": ["a", "b"], "t": 10, "max_concepts": 2})
    n = 20_000
    values = pd.DataFrame({"concept0": np.zeros(n, np.int32), "concept1": np.ones(n, np.int32),
                           "n_concepts": np.full(n, 2, np.int16)})  # fmt: skip
    values.loc[: n // 2, "concept1"] = -1
    values.loc[: n // 2, "n_concepts"] = 1
    uids = hex_to_uids([f"{i:032x}" for i in range(n)])
    decision = f.select(values, uids, SelectContext(seed=0, pool_size=n))
    # "a" appears 20k times, "b" 10k: p(a only) = 10/20000; p(a and b) = 1 - (1 - 1/2000)(1 - 1/1000).
    only_a = decision.keep[: n // 2 + 1].mean()
    both = decision.keep[n // 2 + 1 :].mean()
    assert only_a == pytest.approx(10 / 20000, abs=0.002)
    assert both == pytest.approx(1 - (1 - 1 / 2000) * (1 - 1 / 1000), abs=0.002)
    assert decision.notes["concept_counts_before"] == {"a": n, "b": n // 2 - 1}


def test_metaclip_depends_on_seed_only_through_the_per_uid_draw(pool, tmp_path):
    root, _ = pool
    cfg = {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60}
    run_filter(root, cfg, tmp_path / "a", seed=0)
    run_filter(root, cfg, tmp_path / "b", seed=1)
    run_filter(root, cfg, tmp_path / "c", seed=0)
    assert kept(tmp_path / "a") == kept(tmp_path / "c") != kept(tmp_path / "b")


def test_diversity_balance_keeps_k_classes_of_n(pool, tmp_path):
    root, truth = pool
    cfg = {"name": "diversity_balance", "vocabulary": SHAPES, "size": 200, "ratio": 0.125, "class_of": "rarest"}
    stats = run_filter(root, cfg, tmp_path / "out")
    # K = sqrt(0.125 * 200) = 5 classes, n = sqrt(200 / 0.125) = 40 each.
    survivors = truth[truth["uid"].isin(kept(tmp_path / "out"))]
    counts = survivors["shape"].value_counts()
    assert len(counts) == 5 and "cross" not in counts  # the least frequent class is not chosen
    assert (counts == 40).all()
    assert stats["kept"] == 200


def test_diversity_balance_combination_classes_and_random_choice(pool, tmp_path):
    root, truth = pool
    cfg = {"name": "diversity_balance", "vocabulary": SHAPES + COLOURS, "fraction": 0.2, "ratio": 0.5,
           "choose": "random"}  # fmt: skip
    run_filter(root, cfg, tmp_path / "out", seed=4)
    survivors = truth[truth["uid"].isin(kept(tmp_path / "out"))]
    # N = 200, K = 10 (colour, shape) classes of n = 20; rare classes may hold fewer.
    classes = survivors["text"].str.lower().str.rstrip(".").value_counts()
    assert len(classes) == 10 and classes.max() == 20


def test_budget_arithmetic():
    f = build_filter("diversity_balance", {"vocabulary": ["x"], "size": 10_000, "ratio": 4.0})
    assert f.budget(123) == (10_000, 200, 50)
    with pytest.raises(ConfigError, match="exactly one of size= or fraction="):
        build_filter("diversity_balance", {"vocabulary": ["x"]})
    with pytest.raises(ConfigError, match="ratio"):
        build_filter("diversity_balance", {"vocabulary": ["x"], "size": 5, "ratio": 0})


def test_zeroshot_assignment_uses_class_embeddings(pool, tmp_path):
    root, truth = pool
    cfg = {"name": "metaclip_balance", "by": "zeroshot", "embedding": "toy_img", "vocabulary": SHAPES,
           "class_embeddings": str(root.parent / "classes.npy"), "t": 60}  # fmt: skip
    stats = run_filter(root, cfg, tmp_path / "out")
    survivors = truth[truth["uid"].isin(kept(tmp_path / "out"))]
    counts = survivors["shape"].value_counts()
    assert counts["circle"] < 100 and counts["cross"] == (truth["shape"] == "cross").sum()
    assert "no_concept" not in stats["steps"][0]["dropped"]  # every image gets its nearest class


def test_zeroshot_needs_matching_class_embeddings(pool, tmp_path):
    root, _ = pool
    np.save(tmp_path / "bad.npy", np.ones((3, 8), np.float32))
    with pytest.raises(ConfigError, match="dim 16 but class_embeddings has 8"):
        run_filter(root, {"name": "metaclip_balance", "by": "zeroshot", "embedding": "toy_img",
                          "class_embeddings": str(tmp_path / "bad.npy"), "t": 5}, tmp_path / "o")  # fmt: skip
    with pytest.raises(ConfigError, match="class_embeddings"):
        build_filter("metaclip_balance", {"by": "zeroshot", "embedding": "toy_img"})


def test_cluster_assignment_balances_clusters(pool, tmp_path):
    root, truth = pool
    cfg = {"name": "diversity_balance", "by": "cluster", "embedding": "toy_img", "n_clusters": 6, "size": 120,
           "ratio": 0.3}  # fmt: skip
    stats = run_filter(root, cfg, tmp_path / "out")
    notes_free = stats["steps"][0]
    assert notes_free["kept"] == 6 * 20  # K = 6 clusters of n = 20
    survivors = truth[truth["uid"].isin(kept(tmp_path / "out"))]
    assert survivors["shape"].nunique() == 6  # clusters follow the shapes


@pytest.mark.parametrize("cfg", [
    {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60},
    {"name": "diversity_balance", "vocabulary": SHAPES + COLOURS, "fraction": 0.3, "ratio": 0.5, "choose": "random"},
    {"name": "metaclip_balance", "by": "cluster", "embedding": "toy_img", "n_clusters": 5, "t": 80},
    {"name": "metaclip_balance", "by": "zeroshot", "embedding": "toy_img", "vocabulary": SHAPES,
     "class_embeddings": "<classes.npy>", "t": 60},
    {"name": "diversity_balance", "vocabulary": SHAPES + COLOURS, "size": 300, "class_of": "rarest"},
    {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60, "resample": True},
])  # fmt: skip
def test_same_subset_with_one_or_two_workers_and_shuffled_shard_names(pool, tmp_path, cfg):
    root, _ = pool
    cfg = {k: str(root.parent / "classes.npy") if v == "<classes.npy>" else v for k, v in cfg.items()}
    run_filter(root, cfg, tmp_path / "w1", seed=2, executor=LocalExecutor(workers=1, progress=False))
    run_filter(root, cfg, tmp_path / "w2", seed=2, executor=LocalExecutor(workers=2, progress=False))
    shuffled = tmp_path / "shuffled"
    (shuffled / "metadata").mkdir(parents=True)
    (shuffled / "embeddings" / "toy").mkdir(parents=True)
    for i, f in enumerate(sorted((root / "metadata").glob("*.parquet"))):
        new = f"{(3 * i + 1) % 4:08d}-x"
        pq.write_table(pq.read_table(f).take(np.arange(250)[::-1]), shuffled / "metadata" / f"{new}.parquet")
        shutil.copy(root / "embeddings" / "toy" / f"{f.stem}.npz", shuffled / "embeddings" / "toy" / f"{new}.npz")
    run_filter(shuffled, cfg, tmp_path / "sh", seed=2)
    assert len({file_sha256(tmp_path / d / "subset.npy") for d in ("w1", "w2", "sh")}) == 1


def test_concept_counts_before_and_after_are_reported(pool):
    root, _ = pool
    f = build_filter("metaclip_balance", {"vocabulary": SHAPES, "t": 60})
    values = f.score(__import__("siftbench.benchmark.core.pool", fromlist=["Pool"]).Pool.open(root).read_shard("00000000", ["text"]))
    uids = hex_to_uids([f"{i:032x}" for i in range(len(values))])
    notes = f.select(values, uids, SelectContext(seed=0, pool_size=len(values))).notes
    assert set(notes) >= {"concept_counts_before", "concept_counts_after", "t"}
    assert notes["concept_counts_after"]["cross"] == notes["concept_counts_before"]["cross"]
    assert notes["concept_counts_after"]["circle"] < notes["concept_counts_before"]["circle"]


@pytest.mark.parametrize("target", [{"size": 400}, {"pool_fraction": 0.4}])
def test_metaclip_solved_cap_keeps_exactly_the_budget(pool, tmp_path, target):
    root, truth = pool
    stats = run_filter(root, {"name": "metaclip_balance", "vocabulary": SHAPES, **target}, tmp_path / "out")
    assert stats["kept"] == 400  # 1,000 rows; pool_fraction is a share of the whole pool
    t = stats["steps"][0]["notes"]["t"]
    counts = truth[truth["uid"].isin(kept(tmp_path / "out"))]["shape"].value_counts()
    planted = truth[truth["text"] != "nothing to see here"]["shape"].value_counts()
    assert counts["cross"] == planted["cross"] < t  # the tail below the solved cap stays whole
    assert counts["circle"] < 0.5 * planted["circle"]  # the head gives way
    # The solved cap is the plain rule at that t: running with t= keeps the same set, up to boundary ties.
    run_filter(root, {"name": "metaclip_balance", "vocabulary": SHAPES, "t": t}, tmp_path / "plain")
    assert len(kept(tmp_path / "out") ^ kept(tmp_path / "plain")) <= 2


@pytest.mark.parametrize(("params", "match"), [
    ({}, "exactly one of t=, size= or pool_fraction="),
    ({"t": 10, "size": 5}, "exactly one of"),
    ({"pool_fraction": 1.5}, r"pool_fraction=1.5 must be in \(0, 1\]"),
    ({"size": 0}, "size=0 must be a positive count"),
    ({"resample": True, "size": 5}, "resample=true needs t="),
    ({"resample": True, "t": 10, "size": 5, "pool_fraction": 0.5}, "at most one of size= or pool_fraction="),
])  # fmt: skip
def test_metaclip_budget_parameters_are_checked(params, match):
    with pytest.raises(ConfigError, match=match):
        build_filter("metaclip_balance", {"vocabulary": SHAPES, **params})


def test_systematic_counts_are_exact_fair_and_order_free():
    rng = np.random.default_rng(3)
    weight, draw = rng.random(500) ** 3, rng.random(500)
    counts = systematic_counts(weight, 1234, draw, seed=7)
    share = 1234 * weight / weight.sum()
    assert counts.sum() == 1234
    assert np.all((counts == np.floor(share)) | (counts == np.ceil(share)))
    order = rng.permutation(500)  # rows in another order, each with its own draw: the same counts per row
    assert np.array_equal(systematic_counts(weight[order], 1234, draw[order], seed=7), counts[order])
    assert not np.array_equal(systematic_counts(weight, 1234, draw, seed=8), counts)  # the offset is seeded
    assert systematic_counts(np.zeros(5), 10, draw[:5], seed=0).sum() == 0


def test_metaclip_resample_repeats_the_tail_at_the_same_size(pool, tmp_path):
    root, truth = pool
    stats = run_filter(root, {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60, "resample": True},
                       tmp_path / "out")
    subset = uids_to_hex(read_subset(tmp_path / "out" / "subset.npy"))
    named = truth[truth["text"] != "nothing to see here"]
    assert len(subset) == len(named) == stats["subset_rows"]  # as many rows as candidates with a concept
    times = pd.Series(subset).value_counts()
    per_shape = named.assign(times=named["uid"].map(times).fillna(0)).groupby("shape")["times"]
    # Each sample is drawn in proportion to its keep probability: the tail (count <= t) about
    # len / sum(min(count, t)) times each, the head about t / count times that.
    counts = named["shape"].value_counts()
    rate = len(named) / np.minimum(counts, 60).sum()
    for shape, n in counts.items():
        expected = rate * min(1.0, 60 / n)
        # Each count is the floor or ceiling of its share, so a class's mean is off by rounding noise only.
        assert abs(per_shape.mean()[shape] - expected) < 2 / math.sqrt(n), shape
    assert per_shape.mean()["cross"] > 1.5 and per_shape.mean()["circle"] < 0.5
    assert stats["steps"][0]["dropped"]["no_concept"] == 20
    notes = stats["steps"][0]["notes"]
    assert notes["concept_counts_after"]["cross"] > notes["concept_counts_before"]["cross"]


def test_a_resampling_step_must_come_last(pool, tmp_path):
    root, _ = pool
    cfg = {"name": "bad", "combine": "sequence", "steps": [
        {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60, "resample": True},
        {"name": "metaclip_balance", "vocabulary": SHAPES, "t": 60},
    ]}  # fmt: skip
    with pytest.raises(ConfigError, match="must be the last step of a sequence"):
        run_filter(root, cfg, tmp_path / "out")
