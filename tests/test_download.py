"""siftbench download: img2dataset against a local HTTP server, then the pool through filter and reshard.

The server on 127.0.0.1 serves good PNGs and JPEGs, a 10000 x 10 image, an HTML page, a truncated JPEG
file, a response cut short of its Content-Length, an image whose metadata sha256 is wrong, and a 404.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.tars import iter_tar_samples, sample_uid
from siftbench.benchmark.core.uids import read_subset, uids_to_hex
from siftbench.benchmark.experiment.cli import main
from siftbench.benchmark.stages.download import failure_reason

# img2dataset 1.47 imports imghdr (gone in Python 3.13; pyproject caps Python below it).
pytestmark = [pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning"),
              pytest.mark.timeout(300)]  # wall seconds per test: a stuck img2dataset worker pool fails fast
SAMPLES_PER_SHARD = 5
EXPECTED_FAILURES = {"http_404": 1, "not_decodable": 2, "truncated": 1, "sha256_mismatch": 1}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}


def _encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


class Site:
    """What the server holds: path -> body, and the paths whose response is cut short."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.cut_short: set[str] = set()
        self.hits: list[str] = []
        self.lock = threading.Lock()


@pytest.fixture(scope="module")
def site():
    site = Site()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with site.lock:
                site.hits.append(self.path)
            body = site.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # A cut-short response announces the whole image and closes after a fifth of it.
            self.wfile.write(body[: len(body) // 5] if self.path in site.cut_short else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def metadata(site, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Two DataComp-style metadata files (uid, url, text, face_bboxes, sha256) with npz embeddings beside."""
    rng = np.random.default_rng(0)
    rows = []

    def add(path: str, body: bytes | None, text: str, kind: str, sha: str | None = None, faces=()) -> None:
        if body is not None:
            site.bodies[path] = body
        rows.append({"uid": rng.bytes(16).hex(), "url": site.base + path, "text": text,
                     "face_bboxes": [list(f) for f in faces],
                     "sha256": sha or hashlib.sha256(body or b"").hexdigest(), "kind": kind})

    for i in range(12):
        colour = list(COLOURS)[i % 4]
        size = [(256, 256), (640, 480), (300, 220)][i % 3]
        image = Image.new("RGB", size, COLOURS[colour])
        fmt = "PNG" if i % 2 else "JPEG"
        add(f"/img{i}.{fmt.lower()}", _encode(image, fmt), f"a photo of a {colour} square", "good")
    noise = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    add("/noise.jpg", _encode(noise, "JPEG"), "a photo of grey noise texture", "faces", faces=[(0.0, 0.0, 0.4, 1.0)])
    add("/wide.png", _encode(Image.new("RGB", (10000, 10), (200, 0, 0)), "PNG"), "a very long red line", "wide")
    add("/gone.jpg", None, "a photo of nothing at all", "http_404")
    add("/page.jpg", b"<html><body>not an image</body></html>", "a web page instead", "not_decodable")
    jpeg = _encode(Image.new("RGB", (400, 300), (10, 120, 200)), "JPEG")
    add("/half.jpg", jpeg[: len(jpeg) // 2], "a photo cut in half", "not_decodable")
    add("/short.jpg", jpeg, "a photo cut short in transit", "truncated")
    site.cut_short.add("/short.jpg")
    add("/changed.jpg", jpeg, "a photo that changed", "sha256_mismatch", sha="0" * 64)
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)  # failures spread over shards

    frame["emb"] = list(rng.standard_normal((len(frame), 8)).astype(np.float16))
    folder = tmp_path_factory.mktemp("metadata")
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    for name, part in (("a1b2", frame.iloc[:10]), ("c3d4", frame.iloc[10:])):  # DataComp names files by hash
        pq.write_table(pa.Table.from_pandas(part[schema.names], schema=schema, preserve_index=False),
                       folder / f"{name}.parquet")
        np.savez(folder / f"{name}.npz", b32_img=np.stack(part.emb))
    return folder, frame


def _download(metadata_dir: Path, out: Path, *extra: str) -> int:
    return main(["download", str(metadata_dir), "--out", str(out), "--processes", "1", "--threads", "4",
                 "--samples-per-shard", str(SAMPLES_PER_SHARD), "--timeout", "5", *extra])


@pytest.fixture(scope="module")
def pool(metadata, site, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    hits_before = len(site.hits)
    assert _download(metadata[0], out) == 0
    site.first_run_hits = site.hits[hits_before:]
    return out


def _stats(pool: Path) -> dict:
    return json.loads((pool / "download_stats.json").read_text())


def test_failures_are_counted_per_reason(pool, metadata, site):
    frame = metadata[1]
    stats = _stats(pool)
    assert stats["failures"] == EXPECTED_FAILURES and set(stats["failure_reasons"]) == set(EXPECTED_FAILURES)
    assert stats["attempted"] == len(frame) == 19
    assert stats["downloaded"] == stats["pool_rows"] == 14
    assert stats["shards"] == stats["shards_published"] == 4  # 10 rows -> 2 shards, 9 rows -> 2 shards
    assert stats["unfinished_shards"] == [] and stats["unpaired"] == 0
    assert stats["this_run"]["shards_downloaded"] == 4
    assert stats["settings"]["verify_hash"] and stats["settings"]["blur_faces"]
    assert stats["columns"]["measured_by_download"] == ["original_width", "original_height"]
    # every url asked once (no retries by default)
    assert sorted(site.first_run_hits) == sorted(u.removeprefix(site.base) for u in frame.url)


def test_failure_reasons_of_img2dataset_messages():
    assert failure_reason("HTTP Error 403: Forbidden") == "http_403"
    assert failure_reason("<urlopen error [Errno 111] Connection refused>") == "connection_error"
    assert failure_reason("The read operation timed out") == "timeout"
    assert failure_reason("something new") == "other"


def test_every_downloaded_uid_is_in_the_pool_and_in_its_tar(pool, metadata):
    frame = metadata[1].set_index("uid")
    kept = set(frame.index[frame.kind.isin(["good", "wide", "faces"])])
    store = Pool.open(pool)
    assert set(uids_to_hex(store.all_uids())) == kept
    assert store.shard_names == [t.stem for t in store.tar_files] == [f"{i:08d}" for i in range(4)]
    for shard in store.shard_names:
        meta = pq.read_table(pool / "metadata" / f"{shard}.parquet").to_pandas().set_index("uid")
        in_tar = {}
        for key, sample in iter_tar_samples(pool / "shards" / f"{shard}.tar"):
            in_tar[sample_uid(sample)] = (key, sample)
        assert set(in_tar) == set(meta.index)  # the metadata shard describes exactly its tar
        for uid, (key, sample) in in_tar.items():
            row = meta.loc[uid]
            image = Image.open(io.BytesIO(sample["jpg"]))
            assert image.size == (row.width, row.height) and row.key == key
            assert max(image.size) <= 512 and sample["txt"].decode() == frame.loc[uid, "text"] == row.text
            assert row.url == frame.loc[uid, "url"] and row.sha256 == frame.loc[uid, "sha256"]
        with np.load(pool / "metadata" / f"{shard}.npz") as z:  # input embeddings follow the rows
            assert uids_to_hex(z["uid"]) == list(meta.index)
            assert np.array_equal(z["b32_img"], np.stack([frame.loc[u, "emb"] for u in meta.index]))
    wide = pd.concat(pq.read_table(f).to_pandas() for f in store.metadata_files).set_index("uid")
    wide = wide.loc[frame.index[frame.kind == "wide"][0]]
    assert (wide.original_width, wide.original_height, wide.width, wide.height) == (10000, 10, 512, 1)
    # img2dataset's own per-shard tables keep every row, failures included
    statuses = pd.concat(pd.read_parquet(pool / "shards" / f"{s}.parquet") for s in store.shard_names)
    assert len(statuses) == len(frame) and (statuses.status == "success").sum() == len(kept)


def test_faces_are_blurred(pool, metadata):
    frame = metadata[1]
    uid = frame.uid[frame.kind == "faces"].iloc[0]
    for tar in sorted((pool / "shards").glob("*.tar")):
        for _, sample in iter_tar_samples(tar):
            if sample_uid(sample) == uid:
                pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=np.float32)
                face, rest = pixels[:, :90].std(), pixels[:, 140:].std()  # box: left 40% (+10% margin)
                assert face < rest / 3, (face, rest)
                return
    pytest.fail("the image with a face box is missing")


def test_a_rerun_downloads_nothing(pool, metadata, site):
    files = sorted(p for p in pool.rglob("*") if p.is_file() and p.name != "download_stats.json")
    before = {p: p.stat().st_mtime_ns for p in files}
    hits = len(site.hits)
    assert _download(metadata[0], pool) == 0
    assert site.hits[hits:] == []
    assert {p: p.stat().st_mtime_ns for p in files} == before
    stats = _stats(pool)
    assert stats["this_run"]["shards_downloaded"] == 0 and stats["this_run"]["shards_already_done"] == 4
    assert stats["failures"] == EXPECTED_FAILURES and stats["downloaded"] == 14


def test_a_rerun_without_the_staging_folder_still_downloads_nothing(pool, metadata, site, tmp_path):
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    shutil.rmtree(copy / ".download")  # the published shards' stats files are enough to skip them
    hits = len(site.hits)
    assert _download(metadata[0], copy) == 0
    assert site.hits[hits:] == [] and _stats(copy)["this_run"]["shards_already_done"] == 4


def test_an_unfinished_shard_stays_invisible_and_a_rerun_fetches_only_it(pool, metadata, site, tmp_path):
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    staging = copy / ".download" / "img2dataset"
    for path in [*(copy / "shards").glob("00000002*"), *(copy / "metadata").glob("00000002*")]:
        path.unlink()
    (staging / "00000002_stats.json").unlink()
    # img2dataset cannot write this shard (a folder is in the way): it logs the failure and returns normally
    (staging / "00000002.tar").mkdir()
    assert _download(metadata[0], copy) == 2
    assert _stats(copy)["unfinished_shards"] == ["00000002"]
    assert not (copy / "shards" / "00000002.tar").exists() and len(Pool.open(copy).shard_names) == 3

    # The rerun may use another distributor: ray when it is installed (its img2dataset distributor ignores
    # failed shards, so this also checks that its successes are published).
    (staging / "00000002.tar").rmdir()
    distributor = "ray" if importlib.util.find_spec("ray") else "multiprocessing"
    hits = len(site.hits)
    assert _download(metadata[0], copy, "--distributor", distributor) == 0
    rows = metadata[1].iloc[10:15]  # shard 2 = the first 5 rows of the second file
    assert sorted(site.hits[hits:]) == sorted(u.removeprefix(site.base) for u in rows.url)
    stats = _stats(copy)
    assert stats["failures"] == EXPECTED_FAILURES and stats["this_run"]["shards_downloaded"] == 1
    assert stats["this_run"]["distributor"] == distributor
    assert set(uids_to_hex(Pool.open(copy).all_uids())) == set(uids_to_hex(Pool.open(pool).all_uids()))
    for shard in range(4):
        assert (pq.read_table(copy / "metadata" / f"{shard:08d}.parquet").column("uid").to_pylist()
                == pq.read_table(pool / "metadata" / f"{shard:08d}.parquet").column("uid").to_pylist())


def test_the_downloaded_pool_goes_through_filter_and_reshard(pool, metadata, tmp_path):
    frame = metadata[1]
    assert main(["filter", str(pool), "--out", str(tmp_path / "basic"), "filter=basic"]) == 0
    subset = read_subset(tmp_path / "basic" / "subset.npy")
    # basic drops the 10000 x 10 image (aspect ratio > 3) and keeps every other image (>= 220 px, English)
    assert set(uids_to_hex(subset)) == set(frame.uid[frame.kind.isin(["good", "faces"])])
    assert main(["reshard", str(pool), str(tmp_path / "basic" / "subset.npy"), "--out", str(tmp_path / "shards")]) == 0
    written = {}
    for tar in sorted((tmp_path / "shards").glob("*.tar")):
        for _, sample in iter_tar_samples(tar):
            written[sample_uid(sample)] = Image.open(io.BytesIO(sample["jpg"])).size
    assert set(written) == set(uids_to_hex(subset)) and all(max(size) <= 512 for size in written.values())


def test_a_missing_distributor_is_an_error_not_a_silent_no_op(metadata, site, tmp_path):
    # img2dataset's ray distributor does nothing and returns when ray is not importable; hide ray to check.
    code = ("import sys; sys.modules['ray'] = None; from siftbench.benchmark.experiment.cli import main; "
            f"raise SystemExit(main(['download', {str(metadata[0])!r}, '--out', {str(tmp_path)!r}, "
            "'--distributor', 'ray']))")
    hits = len(site.hits)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert done.returncode == 2, done.stderr
    assert "distributor 'ray' needs ray" in done.stderr and "pip install" in done.stderr
    assert site.hits[hits:] == [] and not list(tmp_path.rglob("*.tar"))


def test_a_rerun_with_other_settings_is_refused(pool, metadata):
    assert _download(metadata[0], pool, "--image-size", "256") == 2


def test_datacomp_layout_with_one_metadata_file_for_three_tars(site, tmp_path, capsys):
    """DataComp's own download: img2dataset fills shards/ from the metadata folder, which stays as it is (one
    hash-named parquet for every tar, failed downloads included). `siftbench embed` joins by uid: every
    downloaded sample is embedded, and a top-30% clip_score on the new column keeps 30% of them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from siftbench.benchmark.stages.download import _run_img2dataset
    from siftbench.benchmark.stages.models import load_model

    rng = np.random.default_rng(7)
    rows = []
    for i in range(60):
        colour, shape = list(COLOURS)[i % 4], ("square", "circle", "bar")[i % 3]
        if i % 10 == 9:
            path = f"/layout/gone{i}.jpg"  # a dead link: listed in the metadata, in no tar
        else:
            pixels = rng.integers(0, 60, (40 + i, 50, 3), dtype=np.uint8)
            pixels[5:25, 5:25] = COLOURS[colour]
            path = f"/layout/img{i}.jpg"
            site.bodies[path] = _encode(Image.fromarray(pixels), "JPEG")
        rows.append({"uid": rng.bytes(16).hex(), "url": site.base + path, "text": f"a {colour} {shape}, photo {i}"})
    pool = tmp_path / "pool"
    (pool / "metadata").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), pool / "metadata" / "3b9e0f6c1d2a4857.parquet")
    settings = {"url_col": "url", "caption_col": "text", "blur_faces": False, "image_size": 512,
                "samples_per_shard": 20, "verify_hash": False}
    _run_img2dataset(pool / "metadata", pool / "shards", settings, distributor="multiprocessing", processes=1,
                     threads=4, timeout=5, retries=0)
    assert sorted(p.name for p in (pool / "shards").glob("*.tar")) == [f"{i:08d}.tar" for i in range(3)]
    downloaded = {sample_uid(s) for t in sorted((pool / "shards").glob("*.tar")) for _, s in iter_tar_samples(t)}
    assert len(downloaded) == 54

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(load_model("siftbench-tiny")[0].state_dict(), checkpoint)
    capsys.readouterr()
    assert main(["embed", str(pool), "--model", "siftbench-tiny", "--pretrained", str(checkpoint), "--key", "tiny",
                 "--device", "cpu", "--workers", "0", "--batch-size", "16"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == stats["embedded"] == 54 and stats["shards_done"] == 3
    assert stats["join"]["joined"] == 54 and stats["join"]["missing"] == 6 and stats["join"]["not_in_metadata"] == 0

    scores = {}
    for path in sorted((pool / "embeddings" / "tiny").glob("*.npz")):
        with np.load(path) as z:
            scores.update(zip(uids_to_hex(z["uid"]), z["similarity"].tolist(), strict=True))
    assert set(scores) == downloaded and all(np.isfinite(list(scores.values())))
    out = tmp_path / "top30"
    assert main(["filter", str(pool), "--out", str(out), "filter=clip_score",
                 "filter.column=clip_tiny_similarity_score", "filter.fraction=0.3"]) == 0
    kept = uids_to_hex(read_subset(out / "subset.npy"))
    assert abs(len(kept) - 0.3 * 54) <= 1
    threshold = min(scores[u] for u in kept)
    assert sorted(kept) == sorted(u for u, s in scores.items() if s >= threshold)  # from all three tars


@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet PAR1"])
def test_a_damaged_metadata_file_is_one_error_line_before_anything_starts(tmp_path, capsys, content):
    folder = tmp_path / "metadata"
    folder.mkdir()
    pq.write_table(pa.table({"uid": ["ab" * 16], "url": ["http://127.0.0.1:9/x.jpg"], "text": ["x"]}),
                   folder / "a.parquet")
    (folder / "b.parquet").write_bytes(content)
    assert _download(folder, tmp_path / "pool") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("siftbench: error: download: ") and "b.parquet: unreadable" in err[0]
    assert not (tmp_path / "pool").exists()
