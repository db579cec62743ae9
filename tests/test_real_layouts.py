"""Derived arrays join the metadata by uid, whatever the file layout: one metadata file per tar, one for
many tars (DataComp's own download keeps its hash-named files), several for one, and cuts that cross tars.
A tar uid the metadata lacks is counted and never shifts a row; a uid listed twice in the metadata is
refused before a subset could name it twice. (img2dataset's real output: tests/test_download.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.uids import hex_to_uids, read_subset, uids_to_hex
from siftbench.benchmark.experiment.cli import main
from siftbench.benchmark.stages.select import run_filter

KEY = "tiny"
SCORE = f"clip_{KEY}_similarity_score"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from siftbench.benchmark.stages.models import load_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(load_model("siftbench-tiny")[0].state_dict(), path)
    return path


def recut(root: Path, files: dict[str, slice], seed: int = 0) -> pd.DataFrame:
    """Rewrite metadata/ as ``files`` (name -> slice of the pool's rows, shuffled first: no file follows a
    tar's order); return the rows."""
    folder = root / "metadata"
    rows = pd.concat(pd.read_parquet(f) for f in sorted(folder.glob("*.parquet")))
    for f in folder.glob("*.parquet"):
        f.unlink()
    rows = rows.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    for name, part in files.items():
        rows.iloc[part].to_parquet(folder / f"{name}.parquet", index=False)
    return rows


def embedded_by_uid(root: Path) -> dict[str, float]:
    """What `siftbench embed` computed for each tar sample, read straight from its npz files."""
    scores: dict[str, float] = {}
    for path in sorted((root / "embeddings" / KEY).glob("*.npz")):
        with np.load(path) as z:
            for uid, score in zip(uids_to_hex(z["uid"]), z["similarity"].tolist(), strict=True):
                scores.setdefault(uid, score)
    return scores


def embed(root: Path, checkpoint: Path) -> dict:
    from siftbench.benchmark.stages.embed import embed_pool

    return embed_pool(root, arch="siftbench-tiny", model_key=KEY, checkpoint=checkpoint, batch_size=16,
                      progress=False)


LAYOUTS = {  # tars x samples per tar, metadata files
    "one file per tar": ((3, 16), None),
    "one file for three tars": ((3, 16), {"5f0c9e2ab7d14e38": slice(None)}),
    "three files for one tar": ((1, 48), {"a17f": slice(0, 10), "b204": slice(10, 30), "c9e1": slice(30, None)}),
    "two files across three tars": ((3, 16), {"0b1d": slice(0, 21), "8e3a": slice(21, None)}),
}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_embeddings_join_the_metadata_by_uid_in_every_layout(layout, tmp_path, checkpoint):
    (tars, per_tar), files = LAYOUTS[layout]
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=tars, per_shard=per_tar, seed=3)
    if files is not None:
        recut(root, files)
    # One metadata uid no tar holds (a failed download), and one tar sample the metadata lacks.
    first = sorted((root / "metadata").glob("*.parquet"))[0]
    frame = pd.read_parquet(first)
    dropped = frame.uid[0]
    frame.loc[0, "uid"] = absent = "ab" * 16
    frame.to_parquet(first, index=False)

    stats = embed(root, checkpoint)
    assert stats["samples"] == stats["embedded"] == len(uids)
    assert stats["join"] == {"metadata_rows": len(uids), "joined": len(uids) - 1, "missing": 1,
                             "derived_rows": len(uids), "not_in_metadata": 1, "duplicate_derived_rows": 0}
    want = embedded_by_uid(root)
    pool = Pool.open(root)
    seen = []
    for shard in pool.shard_names:
        batch = pool.read_shard(shard, [SCORE], [f"{KEY}_img"])
        hexes = uids_to_hex(batch.uids)
        scores = batch.table[SCORE].to_numpy()
        assert len(scores) == len(batch.embeddings[f"{KEY}_img"]) == len(hexes)
        for uid, score, image in zip(hexes, scores, batch.embeddings[f"{KEY}_img"], strict=True):
            if uid == absent:
                assert np.isnan(score) and np.isnan(image).all()
            else:
                assert score == want[uid] and np.isfinite(image).all()
        seen += hexes
    assert sorted(seen) == sorted({*uids, absent} - {dropped})

    out = run_filter(root, {"name": "clip_score", "column": SCORE, "fraction": 0.3}, tmp_path / "out")
    kept = read_subset(tmp_path / "out" / "subset.npy")
    assert abs(len(kept) - 0.3 * (len(uids) - 1)) <= 1 and out["steps"][0]["dropped"]["nan_score"] == 1
    threshold = min(want[u] for u in uids_to_hex(kept))
    assert sorted(uids_to_hex(kept)) == sorted(u for u in set(uids) - {dropped} if want[u] >= threshold)

    # A tar without its npz: embed did not finish, and nothing is guessed.
    (root / "embeddings" / KEY / "00000000.npz").unlink()
    with pytest.raises(PoolError, match=rf"embeddings/{KEY}/ has no npz for 1 of the {tars} tars in shards/ "
                                        r"\(e\.g\. 00000000\.npz for shards/00000000\.tar\)"):
        Pool.open(root).read_shard(pool.shard_names[0], [SCORE])


def test_image_features_join_a_metadata_file_that_covers_several_tars(tmp_path):
    from siftbench.benchmark.core.image_hashing import hex_sha256_words
    from siftbench.benchmark.stages.image_features import compute_image_features

    root = tmp_path / "pool"
    make_tiny_pool(root, n_shards=3, per_shard=12, seed=4)
    recut(root, {"c0ffee": slice(0, 30), "decade": slice(30, None)})
    stats = compute_image_features(root)
    assert stats["samples"] == 36 and stats["missing"] == 0 and stats["not_in_metadata"] == 0
    pool = Pool.open(root)
    for shard in pool.shard_names:
        batch = pool.read_shard(shard, ["sha256"], ["imagehash_sha256", "imagehash_ok"])
        words, _ = hex_sha256_words(batch.table["sha256"].to_numpy(dtype=object))
        assert batch.embeddings["imagehash_ok"].all() and np.array_equal(batch.embeddings["imagehash_sha256"], words)


def test_the_join_is_built_once_and_rebuilt_when_its_inputs_change(tmp_path):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=2, per_shard=8, seed=5)
    recut(root, {"f00d": slice(None)})
    folder = root / "embeddings" / "m"
    folder.mkdir(parents=True)
    for i, part in enumerate((uids[:8], uids[8:])):  # one npz per tar, as the stages write them
        np.savez(folder / f"{i:08d}.npz", uid=hex_to_uids(part), similarity=np.arange(8, dtype=np.float32) + 10 * i)
    pool = Pool.open(root)
    score = dict(zip(uids, [*range(8), *range(10, 18)], strict=True))
    batch = pool.read_shard("f00d", ["clip_m_similarity_score"])
    assert batch.table["clip_m_similarity_score"].tolist() == [score[u] for u in uids_to_hex(batch.uids)]
    index = root / "embeddings" / "m" / "join" / "f00d.npy"
    built = index.stat().st_mtime_ns
    Pool.open(root).read_shard("f00d", ["clip_m_similarity_score"])
    assert index.stat().st_mtime_ns == built  # reused
    np.savez(folder / "00000001.npz", uid=hex_to_uids(uids[8:]), similarity=np.full(8, 7, np.float32))
    batch = Pool.open(root).read_shard("f00d", ["clip_m_similarity_score"])
    assert batch.table["clip_m_similarity_score"].tolist() == [score[u] if u in uids[:8] else 7.0
                                                                for u in uids_to_hex(batch.uids)]


def test_derived_files_from_elsewhere_may_follow_the_metadata_files(tmp_path):
    """Without a stage.json of ours, a derived folder may hold one npz per metadata file (DataComp-style
    hash names), not one per tar: joined by uid all the same."""
    root = tmp_path / "pool"
    make_tiny_pool(root, n_shards=3, per_shard=6, seed=9)
    rows = recut(root, {"9a8b": slice(0, 7), "1c2d": slice(7, None)})
    folder = root / "embeddings" / "theirs"
    folder.mkdir(parents=True)
    for name in ("9a8b", "1c2d"):
        uids = hex_to_uids(pd.read_parquet(root / "metadata" / f"{name}.parquet").uid.tolist()[::-1])
        np.savez(folder / f"{name}.npz", uid=uids, image=(uids["f1"] % 97).astype(np.float32)[:, None])
    pool = Pool.open(root)
    for shard in pool.shard_names:
        batch = pool.read_shard(shard, (), ["theirs_img"])
        assert batch.embeddings["theirs_img"][:, 0].tolist() == (batch.uids["f1"] % 97).astype(np.float32).tolist()
    assert pool.join("theirs").counts["joined"] == len(rows)


def test_a_uid_twice_in_the_tars_uses_its_first_row_and_is_counted(tmp_path):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=2, per_shard=4, seed=6)
    folder = root / "embeddings" / "m"
    folder.mkdir(parents=True)
    np.savez(folder / "00000000.npz", uid=hex_to_uids(uids[:4]), similarity=np.arange(4, dtype=np.float32))
    np.savez(folder / "00000001.npz", uid=hex_to_uids([uids[0], *uids[4:]]), similarity=np.full(5, 9, np.float32))
    pool = Pool.open(root)
    pool.check_requirements("test", ["clip_m_similarity_score"], [])
    assert pool.join("m").counts["duplicate_derived_rows"] == 1 and pool.join("m").counts["not_in_metadata"] == 0
    batch = pool.read_shard("00000000", ["clip_m_similarity_score"])
    assert batch.table["clip_m_similarity_score"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_uid_listed_twice_in_the_metadata_is_refused(tmp_path, capsys):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=2, per_shard=6, seed=7)
    second = root / "metadata" / "00000001.parquet"
    frame = pd.read_parquet(second)
    frame.loc[4, "uid"] = uids[1]  # row 1 of the first file, again as row 4 of the second
    frame.to_parquet(second, index=False)
    out = tmp_path / "out"
    assert main(["filter", str(root), "--out", str(out), "filter=random", "filter.fraction=1.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("siftbench: error: ")
    assert f"{uids[1]} at 00000000.parquet row 1, 00000001.parquet row 4" in err[0]
    assert "1 uid(s) appear more than once" in err[0] and "drop_duplicates" in err[0]
    assert not (out / "subset.npy").exists() and not (out / "subset_stats.json").exists()


def test_the_duplicate_check_costs_less_than_sorting_the_subset():
    """The check sorts the pool's high words once: measured against what write_subset does anyway, sorting a
    top-30% subset of the same pool (12.8M uids, DataComp small: 0.25 s against 0.6 s on 2 cores)."""
    import time

    from siftbench.benchmark.core.uids import sort_uids

    rng = np.random.default_rng(0)
    uids = np.empty(2_000_000, dtype="u8,u8")
    uids["f0"] = rng.integers(0, 2**63, len(uids), dtype=np.uint64)
    uids["f1"] = rng.integers(0, 2**63, len(uids), dtype=np.uint64)
    pool = Pool(root=Path("unused"), metadata_files=[], columns=["uid"])
    clock = time.perf_counter()
    pool.check_unique_uids(uids)
    check = time.perf_counter() - clock
    clock = time.perf_counter()
    sort_uids(uids[: int(0.3 * len(uids))])
    reference = time.perf_counter() - clock
    assert check < 2 * reference + 0.1, (check, reference)


@pytest.mark.parametrize("damage, words", [
    (lambda a: {**a, "similarity": a["similarity"][:-1]}, "'similarity' has 7 rows but 'uid' has 8"),
    (lambda a: {**a, "uid": np.array(list(a["uid"]), dtype=object)}, "'uid' holds Python objects (a pickle)"),
    (lambda a: {k: v for k, v in a.items() if k != "uid"}, "no 'uid' array"),
    (None, "unreadable npz"),
])
def test_a_bad_derived_file_is_named_and_the_pool_is_left_as_it_was(tmp_path, damage, words):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=2, per_shard=8, seed=8)
    folder = root / "embeddings" / "m"
    folder.mkdir(parents=True)
    arrays = {}
    for i, part in enumerate((uids[:8], uids[8:])):
        arrays = {"uid": hex_to_uids(part), "similarity": np.arange(8, dtype=np.float32)}
        np.savez(folder / f"{i:08d}.npz", **arrays)
    if damage is None:
        (folder / "00000001.npz").write_bytes(b"PK\x03\x04 not really a zip")
    else:
        np.savez(folder / "00000001.npz", **damage(arrays))
    with pytest.raises(PoolError, match=r"00000001\.npz: .*" + words.replace("(", r"\(").replace(")", r"\)")):
        Pool.open(root).read_shard("00000000", ["clip_m_similarity_score"])
    assert not (folder / "join").exists()  # checked before anything is written
