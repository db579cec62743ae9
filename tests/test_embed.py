"""The embed stage on a tiny pool built here: files, dtypes, uid alignment through Pool, resume, damage."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

from siftbench.benchmark.core.errors import StageError  # noqa: E402
from siftbench.benchmark.core.executors import LocalExecutor  # noqa: E402
from siftbench.benchmark.core.pool import Pool  # noqa: E402
from siftbench.benchmark.core.uids import UID_DTYPE, hex_to_uids, uids_to_hex  # noqa: E402
from siftbench.benchmark.perf.embed_throughput import benchmark_embed_throughput  # noqa: E402
from siftbench.benchmark.stages.embed import embed_pool  # noqa: E402

COLOURS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20), (20, 230, 230)]
NAMES = ["red", "green", "blue", "yellow", "cyan"]
KEY = "tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(rgb, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def uid_of(shard: int, i: int) -> str:
    return f"{shard * 1000 + i + 1:032x}"


def build_pool(root: Path, shards: int = 2, per_shard: int = 5, corrupt: tuple[int, int] | None = (1, 2)) -> Path:
    """Tars with {key}.png/.txt/.json and metadata parquets listing the same uids in REVERSED order."""
    (root / "shards").mkdir(parents=True)
    (root / "metadata").mkdir()
    for s in range(shards):
        uids, texts = [], []
        with tarfile.open(root / "shards" / f"{s:08d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:08d}{i:04d}"
                text = f"a {NAMES[i % 5]} square from shard {s}"
                image = b"\x89PNG broken" if (s, i) == corrupt else png(COLOURS[i % 5])
                for ext, payload in (("png", image), ("txt", text.encode()),
                                     ("json", json.dumps({"uid": uid_of(s, i), "key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                uids.append(uid_of(s, i))
                texts.append(text)
        pq.write_table(pa.table({"uid": uids[::-1], "text": texts[::-1]}), root / "metadata" / f"{s:08d}.parquet")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Fixed random weights, so every call in this module embeds with the same model."""
    from siftbench.benchmark.stages.models import load_model

    torch.manual_seed(0)
    model = load_model("siftbench-tiny")[0]
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def embed(pool: Path, checkpoint: Path, **kwargs):
    return embed_pool(pool, arch="siftbench-tiny", model_key=KEY, checkpoint=checkpoint, batch_size=3,
                      progress=False, **kwargs)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def same_files(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )


def test_embed_pool_files_dtypes_and_alignment(tmp_path: Path, checkpoint: Path):
    pool = build_pool(tmp_path / "pool")
    stats = embed(pool, checkpoint)
    out = pool / "embeddings" / KEY
    assert sorted(p.name for p in out.glob("*.npz")) == ["00000000.npz", "00000001.npz"]
    assert (out / "stats.json").is_file()
    made_by = json.loads((out / "stage.json").read_text())
    assert made_by["stage"] == "embed" and made_by["inputs"]["checkpoint_sha256"] == stats["model"]["checkpoint_sha256"]
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(stats))
    assert stats["samples"] == 10 and stats["rows"] == 10 and stats["embedded"] == 9
    assert stats["reasons"] == {"undecodable_image": 1} and stats["damaged_shards"] == []

    z = load_npz(out / "00000001.npz")
    assert set(z) == {"uid", "image", "text", "similarity"}
    assert z["uid"].dtype == UID_DTYPE and z["image"].dtype == np.float16 and z["text"].dtype == np.float16
    assert z["similarity"].dtype == np.float32
    assert z["image"].shape == z["text"].shape == (5, 128) and z["similarity"].shape == (5,)
    assert np.array_equal(z["uid"], hex_to_uids([uid_of(1, i) for i in range(5)]))  # tar order
    ok = np.isfinite(z["similarity"])
    assert ok.tolist() == [True, True, False, True, True]  # sample 2's image does not decode
    assert np.isnan(z["image"][2]).all() and np.isfinite(z["text"][2]).all()
    norms = np.linalg.norm(z["image"][ok].astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    cosine = (z["image"][ok].astype(np.float32) * z["text"][ok].astype(np.float32)).sum(axis=1)
    assert np.allclose(cosine, z["similarity"][ok], atol=2e-3)

    # The same numbers straight from the model, for one sample of each shard.
    from siftbench.benchmark.stages.models import load_model

    model, preprocess, tokenizer = load_model("siftbench-tiny", checkpoint=checkpoint)
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.open(io.BytesIO(png(COLOURS[3])))).unsqueeze(0))
        text = model.encode_text(tokenizer(["a yellow square from shard 1"]))
    image, text = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)
    assert np.allclose(z["image"][3], image[0].numpy(), atol=2e-3)
    assert np.allclose(z["text"][3], text[0].numpy(), atol=2e-3)
    assert z["similarity"][3] == pytest.approx(float((image * text).sum()), abs=1e-5)

    # The Pool reader joins on uid: metadata lists the uids in reversed order.
    batch = Pool.open(pool).read_shard("00000001", columns=[f"clip_{KEY}_similarity_score"],
                                       embeddings=[f"{KEY}_img", f"{KEY}_txt"])
    assert np.array_equal(batch.uids, z["uid"][::-1])
    scores = batch.table[f"clip_{KEY}_similarity_score"].to_numpy()
    assert np.array_equal(scores, z["similarity"][::-1], equal_nan=True)
    assert np.array_equal(batch.embeddings[f"{KEY}_img"], z["image"][::-1], equal_nan=True)
    assert np.array_equal(batch.embeddings[f"{KEY}_txt"], z["text"][::-1])


def test_rerun_recomputes_nothing_and_resumes_a_missing_shard(tmp_path: Path, checkpoint: Path):
    pool = build_pool(tmp_path / "pool")
    embed(pool, checkpoint)
    out = pool / "embeddings" / KEY
    first, second = out / "00000000.npz", out / "00000001.npz"
    mtimes = {p: p.stat().st_mtime_ns for p in (first, second)}
    before = load_npz(second)
    stats = embed(pool, checkpoint)
    assert stats["shards_embedded_now"] == 0 and stats["shards_done"] == 2 and stats["samples"] == 10
    assert {p: p.stat().st_mtime_ns for p in (first, second)} == mtimes
    second.unlink()  # as if the run had crashed while writing it
    stats = embed(pool, checkpoint)
    assert stats["shards_embedded_now"] == 1 and stats["embedded"] == 9
    assert first.stat().st_mtime_ns == mtimes[first]
    after = load_npz(second)
    assert same_files(before, after)
    assert not list(out.glob(".*tmp*"))


def test_other_weights_under_the_same_key_are_refused(tmp_path: Path, checkpoint: Path):
    pool = build_pool(tmp_path / "pool", shards=1, corrupt=None)
    embed(pool, checkpoint)
    with pytest.raises(StageError, match="use another model key"):
        embed_pool(pool, arch="siftbench-tiny", model_key=KEY, progress=False)  # random weights


def test_a_cache_folder_restarts_where_a_users_folder_is_refused(tmp_path: Path, checkpoint: Path):
    """The world's caches pass on_change="restart": embeddings of other weights, or left by a siftbench from
    before stage.json, are recomputed there, and refused anywhere else."""
    pool = build_pool(tmp_path / "pool", corrupt=None)
    embed(pool, checkpoint)
    out = pool / "embeddings" / KEY
    made = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    (out / "stage.json").unlink()  # as an older siftbench left it: a model.json, no stage.json
    (out / "model.json").write_text("{}")
    with pytest.raises(StageError, match=r"no stage\.json describes"):
        embed(pool, checkpoint)
    assert embed(pool, checkpoint, on_change="restart")["shards_embedded_now"] == 2
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == made
    assert (out / "stage.json").is_file() and not (out / "model.json").exists()
    random_weights = embed_pool(pool, arch="siftbench-tiny", model_key=KEY, progress=False, on_change="restart")
    assert random_weights["shards_embedded_now"] == 2 and {p.name: p.read_bytes() for p in out.glob("*.npz")} != made


def test_damaged_tar_is_read_past_the_damage_and_counted(tmp_path: Path, checkpoint: Path, capfd):
    pool = build_pool(tmp_path / "pool", corrupt=None)
    tar = pool / "shards" / "00000001.tar"
    raw = bytearray(tar.read_bytes())
    # Each sample is 3 members of 512-byte header + 512-byte block: garble the 3rd sample's image header.
    raw[2 * 3072 : 2 * 3072 + 100] = b"\xff" * 100
    tar.write_bytes(bytes(raw))
    stats = embed(pool, checkpoint)
    assert stats["damaged_shards"] == ["00000001.tar"] and stats["damaged_members_lost"] == 1
    assert stats["reasons"] == {"damaged_tar": 1, "no_image": 1}  # the 3rd sample lost its image, not its caption
    assert stats["samples"] == stats["rows"] == 10 and stats["embedded"] == 9  # the 4th and 5th are read on
    assert stats["join"] == {"metadata_rows": 10, "joined": 10, "missing": 0, "derived_rows": 10,
                             "not_in_metadata": 0, "duplicate_derived_rows": 0}
    shard = json.loads((pool / "embeddings" / KEY / "stats" / "00000001.json").read_text())
    assert shard["damage"]["lost_members"] == 1 and shard["damage"]["regions"][0]["offset"] == 2 * 3072
    warning = [line for line in capfd.readouterr().err.splitlines() if "damaged tar" in line]
    assert len(warning) == 1 and "00000001.tar" in warning[0] and "byte 6,144" in warning[0]
    batch = Pool.open(pool).read_shard("00000001", columns=[f"clip_{KEY}_similarity_score"],
                                       embeddings=[f"{KEY}_txt"])
    scores = dict(zip(uids_to_hex(batch.uids), batch.table[f"clip_{KEY}_similarity_score"], strict=True))
    assert [np.isnan(scores[uid_of(1, i)]) for i in range(5)] == [False, False, True, False, False]
    assert np.isfinite(batch.embeddings[f"{KEY}_txt"]).all()


def test_tar_uids_the_metadata_lacks_are_counted_and_never_break_the_rows(tmp_path: Path, checkpoint: Path):
    pool = build_pool(tmp_path / "pool", corrupt=None)
    # Shard 0's metadata loses a row (its sample stays in the tar) and gains a uid that no tar holds.
    meta = pool / "metadata" / "00000000.parquet"
    table = pq.read_table(meta).to_pandas()
    extra, absent = table.uid[0], "ab" * 16
    table.loc[0, "uid"] = absent
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), meta)
    stats = embed(pool, checkpoint)
    assert stats["samples"] == stats["embedded"] == 10
    assert stats["join"]["not_in_metadata"] == 1 and stats["join"]["missing"] == 1 and stats["join"]["joined"] == 9
    p = Pool.open(pool)
    batch = p.read_shard("00000000", columns=[f"clip_{KEY}_similarity_score"])
    assert len(batch) == 5 and uids_to_hex(batch.uids)[0] == absent
    assert np.isnan(batch.table[f"clip_{KEY}_similarity_score"]).tolist() == [True, False, False, False, False]
    assert extra not in uids_to_hex(batch.uids)
    # Every filter still takes the pool: 9 scores, the absent uid dropped as NaN and counted.
    from siftbench.benchmark.stages.select import run_filter

    stats = run_filter(pool, {"name": "clip_score", "column": f"clip_{KEY}_similarity_score", "fraction": 0.5},
                       tmp_path / "out")
    assert stats["pool_size"] == 10 and stats["steps"][0]["dropped"]["nan_score"] == 1


def test_executor_and_decode_workers_give_the_same_files(tmp_path: Path, checkpoint: Path):
    reference = build_pool(tmp_path / "a", per_shard=3)
    want_stats = embed(reference, checkpoint)
    for name, kwargs in (("b", {"executor": LocalExecutor(workers=1, progress=False)}), ("c", {"num_workers": 1})):
        pool = build_pool(tmp_path / name, per_shard=3)
        stats = embed(pool, checkpoint, **kwargs)
        for key in ("samples", "rows", "embedded", "reasons"):
            assert stats[key] == want_stats[key], (name, key)
        for shard in ("00000000.npz", "00000001.npz"):
            want = load_npz(reference / "embeddings" / KEY / shard)
            got = load_npz(pool / "embeddings" / KEY / shard)
            assert same_files(want, got), (name, shard)


def test_throughput_benchmark(tmp_path: Path, checkpoint: Path):
    pool = build_pool(tmp_path / "pool", per_shard=4)
    report = benchmark_embed_throughput(pool, arch="siftbench-tiny", checkpoint=checkpoint, batch_size=4)
    assert report["pairs"] == 8
    assert report["stage_pairs_per_s"] > 0 and report["in_memory_pairs_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["stage_pairs_per_s"] / report["in_memory_pairs_per_s"])
    assert report["stage_inputs_equal_cpu_preprocess"] is True
    assert not (pool / "embeddings").exists()  # measured in a temporary folder, the pool is untouched


def test_batch_preprocess_is_bit_identical_to_open_clips_preprocess():
    import open_clip

    from siftbench.benchmark.stages.embed.preprocess import BatchPreprocess, _decode_rgb
    from siftbench.eval_suite.data import decode_image

    rng = np.random.default_rng(0)
    images = []
    for size, mode in (((32, 32), "RGB"), ((32, 32), "RGBA"), ((50, 20), "RGB"), ((5, 32), "L"),
                       ((24, 24), "P"), ((300, 224), "RGB"), ((224, 224), "RGB")):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    for preprocess in (open_clip.image_transform(32, is_train=False), open_clip.image_transform(224, is_train=False)):
        batcher = BatchPreprocess(preprocess)
        assert batcher.fast
        want = torch.stack([preprocess(decode_image(b)) for b in images])
        got = batcher.batch([batcher.image(_decode_rgb(b)) for b in images])
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
        # The GPU path: uint8 pixels from the workers, normalised where the model runs, by the same ops.
        later = BatchPreprocess(preprocess, normalize_later=True)
        pixels = later.batch([later.image(_decode_rgb(b)) for b in images])
        assert pixels.dtype == torch.uint8 and pixels.shape == (len(images), *want.shape[2:], 3)
        assert torch.equal(later.to_device(pixels, "cpu"), want)


def test_png_fast_decode_gives_pils_pixels_and_leaves_the_rest_to_pil():
    from siftbench.benchmark.stages.embed.preprocess import _decode_plain_png, _decode_rgb
    from siftbench.eval_suite.data import decode_image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)

    def encode(image: Image.Image, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, **kwargs)
        return buffer.getvalue()

    rgb = Image.fromarray(pixels)
    plain = encode(rgb, format="PNG")
    cases = {
        "plain": plain,
        "compressed hard": encode(rgb, format="PNG", compress_level=9),
        "with tRNS": encode(rgb, format="PNG", transparency=(1, 2, 3)),
        "16-bit grey": encode(Image.fromarray(pixels[..., 0].astype(np.uint16) * 257), format="PNG"),
        "palette": encode(rgb.convert("P"), format="PNG"),
        "jpeg": encode(rgb, format="JPEG", quality=90),
    }
    assert isinstance(_decode_plain_png(plain), np.ndarray)  # the fast path is taken where it may be
    assert _decode_plain_png(cases["jpeg"]) is None and _decode_plain_png(cases["palette"]) is None
    for name, data in cases.items():
        want = np.asarray(decode_image(data))
        assert np.array_equal(np.asarray(_decode_rgb(data)), want), name
    assert _decode_rgb(plain[: len(plain) // 2]) is None  # truncated: undecodable, as PIL says
    assert _decode_rgb(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) is None


def test_fast_tokenizer_gives_open_clips_tokens():
    import open_clip

    from siftbench.benchmark.stages.embed.preprocess import AsciiFastTokenizer

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    fast = AsciiFastTokenizer.wrap(tokenizer)
    assert isinstance(fast, AsciiFastTokenizer)
    rng = np.random.default_rng(0)
    alphabet = [*list("abcXYZ019 ,.!?'&;-\t\n"), "é", "ﬁ", "“", "”", "Ã©", "&amp;", "&lt;", "\u3000", "\x07"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(2000)]
    texts += ["a photo of a red circle", "A  BIG   Star, on a checker background", "x " * 100, ""]
    assert torch.equal(fast(texts), tokenizer(texts))
    assert torch.equal(fast("one caption"), tokenizer("one caption"))

    class Plain:  # no clean_fn/BPE internals: used as it is
        def __call__(self, texts):
            return texts

    plain = Plain()
    assert AsciiFastTokenizer.wrap(plain) is plain


def test_killed_embed_resumes_without_recomputing_finished_shards(tmp_path: Path, checkpoint: Path):
    """SIGKILL `siftbench embed` once its first shard is written, rerun it: the killed process's lock on
    the folder died with it (the rerun does not wait), finished shards are kept as they are (same inode and
    mtime), none is half-written, and the rest is embedded."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pool_factory import make_tiny_pool

    pool = tmp_path / "pool"
    make_tiny_pool(pool, n_shards=8, per_shard=48)
    out = pool / "embeddings" / KEY
    cmd = [sys.executable, "-m", "siftbench.benchmark.experiment.cli", "embed", str(pool), "--model", "siftbench-tiny",
           "--pretrained", str(checkpoint), "--key", KEY, "--batch-size", "8", "--device", "cpu", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.npz")}
    assert 1 <= len(done) < 8, f"killed too late or too early: {sorted(done)}"
    for name in done:  # every file under its final name is complete
        assert load_npz(out / name)["uid"].shape == (48,)

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=300)
    assert "in use by" not in rerun.stderr
    stats = json.loads(rerun.stdout)
    assert stats["shards_embedded_now"] == 8 - len(done) and stats["shards_done"] == 8
    assert stats["samples"] == stats["embedded"] == 8 * 48
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n in done for p in [out / n]} == done
    assert not list(out.glob(".*tmp*")) and not list((out / "stats").glob(".*tmp*"))


def test_decode_workers_default_keeps_a_gpu_fed_and_leaves_the_cpu_to_the_model(monkeypatch):
    import os

    from siftbench.benchmark.stages import embed

    assert embed.default_decode_workers("cpu") == 0
    for cores, workers in ((2, 1), (16, 15), (64, 16)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert embed.default_decode_workers("cuda") == workers
