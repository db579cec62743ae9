"""The image-features stage: imagehash-identical hashes, one npz per tar, resumable, damage counted."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from dup_pool import make_dup_pool, png, render

from siftbench.benchmark.core.image_hashing import hash_image_bytes, hex_sha256_words, mirror_thumbnails
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.uids import hex_to_uids
from siftbench.benchmark.stages.image_features import compute_image_features


@pytest.fixture(scope="module")
def images():
    from dup_pool import picture

    rng = np.random.default_rng(3)
    return [png(render(picture(rng))) for _ in range(40)]


def test_hashes_match_the_imagehash_library(images):
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    ours = hash_image_bytes(images)
    for k, data in enumerate(images):
        img = Image.open(io.BytesIO(data))
        assert int(ours["phash"][k]) == int(str(imagehash.phash(img)), 16)
        assert int(ours["dhash"][k]) == int(str(imagehash.dhash(img)), 16)
        flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert int(ours["phash_mirror"][k]) == int(str(imagehash.phash(flipped)), 16)


def test_mirror_thumbnail_is_the_thumbnail_of_the_flipped_image(images):
    from PIL import Image

    flipped = []
    for data in images:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, format="PNG")
        flipped.append(buf.getvalue())
    assert np.array_equal(mirror_thumbnails(hash_image_bytes(images)["thumb"]), hash_image_bytes(flipped)["thumb"])


def test_undecodable_and_empty_images_are_flagged_not_fatal(images):
    out = hash_image_bytes([images[0], b"not an image", b""])
    assert out["ok"].tolist() == [1, 0, 0]
    assert out["phash"][1] == 0 and out["sha256"][2].tolist() == [0, 0, 0, 0]
    assert out["sha256"][1].any()  # bytes that do not decode still have a digest


def test_hex_digests_to_words_and_bad_ones_masked():
    import hashlib

    good = hashlib.sha256(b"x").hexdigest()
    words, valid = hex_sha256_words([good, good.upper(), None, "zz", good[:10]])
    assert valid.tolist() == [True, True, False, False, False]
    assert words[0].tolist() == np.frombuffer(hashlib.sha256(b"x").digest(), ">u8").tolist()
    assert np.array_equal(words[0], words[1])


def test_stage_writes_one_file_per_tar_joined_on_uid(tmp_path):
    truth = make_dup_pool(tmp_path / "pool", n_shards=2, per_shard=20, copies=1, exact=1)
    stats = compute_image_features(tmp_path / "pool")
    assert stats["samples"] == 40 and stats["undecodable"] == 0 and stats["missing"] == 0
    pool = Pool.open(tmp_path / "pool")
    assert {"imagehash_phash", "imagehash_sha256", "imagehash_thumb", "imagehash_ok"} <= set(pool.embedding_keys())
    batch = pool.read_shard("00000000", ["sha256"], ["imagehash_sha256", "imagehash_ok"])
    words, _ = hex_sha256_words(batch.table["sha256"].to_numpy(dtype=object))
    assert np.array_equal(batch.embeddings["imagehash_sha256"], words)  # the stage agrees with the metadata
    assert batch.embeddings["imagehash_ok"].all()
    assert len(truth) == 40


def test_stage_resumes_and_counts_damage(tmp_path):
    root = tmp_path / "pool"
    make_dup_pool(root, n_shards=2, per_shard=10, copies=0, exact=0)
    compute_image_features(root)
    done = root / "embeddings" / "imagehash" / "00000000.npz"
    before = done.stat().st_mtime_ns
    # Shard 1: one image replaced by garbage, one sample removed from the tar (metadata still lists it).
    tar_path = root / "shards" / "00000001.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name.startswith("00010001."):
                continue
            if m.name == "00010000.png":
                data = b"garbage"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    (root / "embeddings" / "imagehash" / "00000001.npz").unlink()
    stats = compute_image_features(root)
    assert done.stat().st_mtime_ns == before
    assert stats["undecodable"] == 1 and stats["missing"] == 1 and stats["skipped_existing"] == 1
    assert stats["not_in_metadata"] == 0 and stats["damaged_tars"] == 0
    with np.load(root / "embeddings" / "imagehash" / "00000001.npz") as z:
        assert len(z["uid"]) == 9 and int((z["ok"] == 0).sum()) == 1  # the tar's samples
    batch = Pool.open(root).read_shard("00000001", (), ["imagehash_ok", "imagehash_phash"])
    meta_uids = hex_to_uids(pq.read_table(root / "metadata" / "00000001.parquet").column("uid"))
    assert np.array_equal(batch.uids, meta_uids)  # joined on uid: the metadata's rows, in its order
    assert batch.embeddings["imagehash_ok"].tolist() == [0, 0] + [1] * 8  # garbage, then the removed sample
    assert (batch.embeddings["imagehash_phash"][:2] == 0).all()
