"""Filters and the score/select pipeline on a small metadata pool made on the fly."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from siftbench.benchmark.core.errors import ConfigError, MissingColumnError, PoolError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.uids import file_sha256, hex_to_uids, read_subset
from siftbench.benchmark.perf.bench import datacomp_style_top_fraction, make_metadata_pool
from siftbench.benchmark.stages.select import run_filter

CAPTIONS = {
    "en": "a photo of a red circle on a striped background",
    "de": "ein Foto von einem roten Kreis auf gestreiftem Hintergrund",
    "short": "the house",
}


@pytest.fixture
def pool(tmp_path):
    """4 shards x 50 rows: uid, text, sizes, a score column; row i's properties are known."""
    rng = np.random.default_rng(1)
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    for s in range(4):
        n = 50
        kinds = rng.choice(list(CAPTIONS), size=n, p=[0.6, 0.2, 0.2])
        table = pa.table(
            {
                "uid": [rng.bytes(16).hex() for _ in range(n)],
                "text": [CAPTIONS[k] for k in kinds],
                "original_width": rng.choice([100, 400, 1600], size=n),
                "original_height": np.full(n, 400),
                "clip_b32_similarity_score": rng.random(n).astype(np.float32),
            }
        )
        pq.write_table(table, root / "metadata" / f"{s:08d}.parquet")
    return root


def frame(pool_root):
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in sorted((pool_root / "metadata").glob("*.parquet"))])


def kept_hex(out):
    subset = read_subset(out / "subset.npy")
    return {f"{int(hi):016x}{int(lo):016x}" for hi, lo in subset}


def test_clip_score_top_fraction_is_datacomps_global_rule(pool, tmp_path):
    stats = run_filter(pool, {"name": "clip_score", "fraction": 0.3}, tmp_path / "out")
    reference = datacomp_style_top_fraction(pool, "clip_b32_similarity_score", 0.3, tmp_path / "ref.npy")
    assert np.array_equal(read_subset(tmp_path / "out" / "subset.npy"), reference)
    assert stats["kept"] == 61  # int(200 * 0.3) + 1: DataComp keeps score >= sorted_desc[int(N f)]
    assert stats["steps"][0]["dropped"] == {"below_threshold": 139}


def test_clip_score_threshold(pool, tmp_path):
    df = frame(pool)
    run_filter(pool, {"name": "clip_score", "threshold": 0.5}, tmp_path / "out")
    assert kept_hex(tmp_path / "out") == set(df.uid[df.clip_b32_similarity_score >= 0.5])


def test_basic_filter_counts_each_reason(pool, tmp_path):
    df = frame(pool)
    stats = run_filter(pool, {"name": "basic"}, tmp_path / "out")
    english = df.text != CAPTIONS["de"]
    long_enough = df.text != CAPTIONS["short"]
    big = df.original_width >= 200
    aspect_ok = df.original_width / df.original_height <= 3
    expected = set(df.uid[english & long_enough & big & aspect_ok])
    assert kept_hex(tmp_path / "out") == expected
    dropped = stats["steps"][0]["dropped"]
    assert dropped["not_en"] == int((~english).sum())
    assert sum(dropped.values()) == len(df) - len(expected)


def test_concept_match_is_space_padded(tmp_path):
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    texts = ["a red circle.", "concatenated circles", "A CIRCLE", "a square", "nothing here"]
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(5)], "text": texts}), root / "metadata" / "a.parquet")
    stats = run_filter(root, {"name": "concept_match", "vocabulary": ["circle", "square"]}, tmp_path / "out")
    assert kept_hex(tmp_path / "out") == {f"{i:032x}" for i in (0, 2, 3)}
    assert stats["steps"][0]["dropped"] == {"no_concept_in_caption": 2}


def test_random_keeps_the_fraction_and_depends_on_seed(pool, tmp_path):
    a = run_filter(pool, {"name": "random", "fraction": 0.25}, tmp_path / "a", seed=0)
    run_filter(pool, {"name": "random", "fraction": 0.25}, tmp_path / "b", seed=1)
    assert a["kept"] == 50
    assert kept_hex(tmp_path / "a") != kept_hex(tmp_path / "b")


def test_sequence_selects_among_survivors(pool, tmp_path):
    cfg = {"combine": "sequence", "steps": [{"name": "basic"}, {"name": "clip_score", "fraction": 0.5}]}
    stats = run_filter(pool, cfg, tmp_path / "out")
    df = frame(pool)
    basic_kept = stats["steps"][0]["kept"]
    assert stats["steps"][1]["input"] == basic_kept
    survivors = df[df.uid.isin(kept_hex(tmp_path / "out"))]
    assert (survivors.text == CAPTIONS["en"]).all()
    assert stats["kept"] == int(basic_kept * 0.5) + 1


def test_intersection_and_union(pool, tmp_path):
    steps = [{"name": "clip_score", "threshold": 0.5}, {"name": "basic"}]
    run_filter(pool, {"combine": "intersection", "steps": steps}, tmp_path / "i")
    run_filter(pool, {"combine": "union", "steps": steps}, tmp_path / "u")
    run_filter(pool, steps[0], tmp_path / "c")
    run_filter(pool, steps[1], tmp_path / "b")
    clip, basic = kept_hex(tmp_path / "c"), kept_hex(tmp_path / "b")
    assert kept_hex(tmp_path / "i") == clip & basic
    assert kept_hex(tmp_path / "u") == clip | basic


def test_same_subset_with_one_or_two_workers_and_shuffled_shard_names(pool, tmp_path):
    cfg = {"combine": "sequence", "steps": [{"name": "random", "fraction": 0.8}, {"name": "clip_score", "fraction": 0.5}]}
    run_filter(pool, cfg, tmp_path / "w1", executor=LocalExecutor(workers=1, progress=False))
    run_filter(pool, cfg, tmp_path / "w2", executor=LocalExecutor(workers=2, progress=False))
    shuffled = tmp_path / "shuffled"
    (shuffled / "metadata").mkdir(parents=True)
    for i, f in enumerate(sorted((pool / "metadata").glob("*.parquet"))):
        shutil.copy(f, shuffled / "metadata" / f"{(7 * i + 3) % 4:08d}-x.parquet")
    run_filter(shuffled, cfg, tmp_path / "sh")
    digests = {file_sha256(tmp_path / d / "subset.npy") for d in ("w1", "w2", "sh")}
    assert len(digests) == 1


def test_scoring_resumes_per_shard(pool, tmp_path):
    run_filter(pool, {"name": "clip_score", "fraction": 0.5}, tmp_path / "out")
    score_files = sorted((tmp_path / "out" / "scores" / "0_clip_score").glob("*.arrow"))
    assert len(score_files) == 4
    mtimes = [f.stat().st_mtime_ns for f in score_files]
    score_files[0].unlink()
    run_filter(pool, {"name": "clip_score", "fraction": 0.5}, tmp_path / "out")
    assert [f.stat().st_mtime_ns for f in score_files[1:]] == mtimes[1:]
    assert score_files[0].exists()


def test_stats_file_is_written(pool, tmp_path):
    run_filter(pool, {"name": "no_filter"}, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "subset_stats.json").read_text())
    assert stats["pool_size"] == stats["kept"] == 200


def test_nan_scores_are_dropped_and_counted(tmp_path):
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    scores = np.array([0.1, np.nan, 0.9, 0.5], dtype=np.float32)
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(4)], "clip_b32_similarity_score": scores}),
                   root / "metadata" / "a.parquet")
    stats = run_filter(root, {"name": "clip_score", "threshold": 0.0}, tmp_path / "out")
    assert stats["steps"][0]["dropped"] == {"nan_score": 1}


@pytest.mark.parametrize("rule", [{"threshold": 0.0}, {"fraction": 0.5}])
def test_infinite_scores_are_dropped_and_counted_like_nan(tmp_path, rule):
    """+inf would outrank every score and -inf would pass as 'below threshold': neither is ranked."""
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    scores = np.array([0.1, np.inf, 0.9, -np.inf, np.nan, 0.5, 0.3, np.inf], dtype=np.float32)
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(8)], "clip_b32_similarity_score": scores}),
                   root / "metadata" / "a.parquet")
    stats = run_filter(root, {"name": "clip_score", **rule}, tmp_path / "out")
    dropped = stats["steps"][0]["dropped"]
    assert dropped["nan_score"] == 1 and dropped["infinite_score"] == 3
    # Of the four finite scores: all (threshold 0), or DataComp's top half (score >= sorted_desc[2]: three).
    kept = {0, 2, 5, 6} if "threshold" in rule else {2, 5, 6}
    assert kept_hex(tmp_path / "out") == {f"{i:032x}" for i in kept}
    assert sum(dropped.values()) + stats["kept"] == 8


def test_basic_drops_and_counts_missing_or_infinite_sizes(tmp_path):
    """DataComp's comparisons (min side >= 200, aspect <= 3) fail for a missing or infinite size."""
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(4)], "text": [CAPTIONS["en"]] * 4,
                             "original_width": [400.0, np.nan, np.inf, 400.0],
                             "original_height": [400, 400, 400, None]}),
                   root / "metadata" / "a.parquet")  # fmt: skip
    stats = run_filter(root, {"name": "basic"}, tmp_path / "out")
    assert kept_hex(tmp_path / "out") == {f"{0:032x}"}
    assert stats["steps"][0]["dropped"] == {"nan_size": 2, "infinite_size": 1}


@pytest.mark.parametrize(("filter_cfg", "column", "values", "kind"), [
    ({"name": "clip_score", "fraction": 0.5}, "clip_b32_similarity_score", ["0.9", "0.1", "0.5", "0.3"], "string"),
    ({"name": "clip_score", "fraction": 0.5}, "clip_b32_similarity_score", [True, False, True, True], "boolean"),
    ({"name": "basic"}, "original_width", ["400", "400", "100", "400"], "string"),
])  # fmt: skip
def test_a_numeric_column_of_another_type_is_refused(tmp_path, filter_cfg, column, values, kind):
    """Numbers written as text are neither ranked as text nor converted silently: one error naming the file."""
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    table = {"uid": [f"{i:032x}" for i in range(4)], "text": [CAPTIONS["en"]] * 4, "original_width": [400] * 4,
             "original_height": [400] * 4, "clip_b32_similarity_score": [0.5] * 4}
    pq.write_table(pa.table({**table, column: values}), root / "metadata" / "00000000.parquet")
    with pytest.raises(PoolError, match=rf"metadata/00000000\.parquet: column '{column}' holds {kind} values"):
        run_filter(root, filter_cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "subset.npy").exists()


def test_a_column_of_nulls_only_is_missing_values_not_a_type_error(tmp_path):
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(3)], "clip_b32_similarity_score": pa.nulls(3)}),
                   root / "metadata" / "a.parquet")
    with pytest.raises(ConfigError, match="every value of 'clip_b32_similarity_score' is NaN or infinite"):
        run_filter(root, {"name": "clip_score", "fraction": 0.5}, tmp_path / "out")


def test_missing_column_names_what_exists(tmp_path):
    root = make_metadata_pool(tmp_path / "pool", 100, files=2)
    with pytest.raises(MissingColumnError, match=r"clip_l14_similarity_score.*has \['uid', 'text'"):
        run_filter(root, {"name": "clip_score", "column": "clip_l14_similarity_score", "fraction": 0.3}, tmp_path / "o")


def test_missing_pool_folder(tmp_path):
    with pytest.raises(PoolError, match="does not exist"):
        run_filter(tmp_path / "nowhere", {"name": "no_filter"}, tmp_path / "o")


def test_unknown_filter_suggests_names(pool, tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown filter 'clip_scor'\. Did you mean 'clip_score'"):
        run_filter(pool, {"name": "clip_scor"}, tmp_path / "o")


def test_threshold_and_fraction_both_given(pool, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of threshold= or fraction="):
        run_filter(pool, {"name": "clip_score", "threshold": 0.2, "fraction": 0.3}, tmp_path / "o")


def test_unknown_parameter(pool, tmp_path):
    with pytest.raises(ConfigError, match=r"filter 'random' has no parameter 'fractoin'; did you mean 'fraction'\?"):
        run_filter(pool, {"name": "random", "fractoin": 0.3}, tmp_path / "o")


@pytest.mark.parametrize("vocabulary", [[], ["cat", "cat"], ["cat", " "]])
def test_bad_vocabulary(pool, tmp_path, vocabulary):
    with pytest.raises(ConfigError, match="vocabulary"):
        run_filter(pool, {"name": "concept_match", "vocabulary": vocabulary}, tmp_path / "o")


def test_corrupt_parquet_is_named(pool, tmp_path):
    (pool / "metadata" / "00000002.parquet").write_bytes(b"not parquet")
    with pytest.raises(PoolError, match=r"00000002\.parquet: unreadable parquet"):
        Pool.open(pool).read_shard("00000002", ["text"])


def test_uids_in_pool_reader_match_hex(pool):
    p = Pool.open(pool)
    batch = p.read_shard(p.shard_names[0], ["uid", "text"])
    assert np.array_equal(batch.uids, hex_to_uids(batch.table["uid"].tolist()))


def test_derived_arrays_join_on_uid_not_row_order(pool):
    p = Pool.open(pool)
    shard = p.shard_names[0]
    uids = p.read_shard(shard).uids
    folder = pool / "embeddings" / "m"
    folder.mkdir(parents=True)
    for name in p.shard_names:
        u = p.read_shard(name).uids
        np.savez(folder / f"{name}.npz", uid=u[::-1], image=np.arange(len(u))[::-1, None].astype(np.float16) * np.ones((1, 4), np.float16),
                 similarity=np.arange(len(u), dtype=np.float32)[::-1], phash=np.arange(len(u), dtype=np.uint64)[::-1])
    assert {"m_img", "m_phash"} <= set(p.embedding_keys())
    batch = p.read_shard(shard, ["clip_m_similarity_score"], ["m_img", "m_phash"])
    assert batch.table["clip_m_similarity_score"].tolist() == list(range(len(uids)))
    assert batch.embeddings["m_phash"].tolist() == list(range(len(uids)))
    assert batch.embeddings["m_img"].shape == (len(uids), 4)


def test_embedding_rows_out_of_sync_are_an_error(pool):
    p = Pool.open(pool)
    folder = pool / "embeddings" / "m"
    folder.mkdir(parents=True)
    u = p.read_shard(p.shard_names[0]).uids
    np.savez(folder / f"{p.shard_names[0]}.npz", uid=u, image=np.zeros((len(u) - 3, 4), np.float16))
    with pytest.raises(PoolError, match="'image' has 47 rows but 'uid' has 50"):
        p.read_shard(p.shard_names[0], (), ["m_img"])
