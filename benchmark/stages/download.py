"""download: a metadata folder (DataComp's parquet files: uid, url, text, ...) -> a pool, with img2dataset.

    POOL/
      shards/{i:08d}.tar          img2dataset's webdataset shard: {key}.jpg, {key}.txt, {key}.json (uid, caption, ...)
      shards/{i:08d}.parquet      img2dataset's table of every input row of the shard: status, error_message, ...
      shards/{i:08d}_stats.json   img2dataset's shard stats; appears last, so it marks a published shard
      metadata/{i:08d}.parquet    the input rows of the samples that are in the tar (+ key, width, height)
      metadata/{i:08d}.npz        the input's embeddings (b32_img, ...) for the same rows, when it had .npz files
      download_stats.json         successes and failures per reason over the whole pool
      stage.json                  what was asked (a rerun with other inputs or settings is refused)
      .download/img2dataset/      img2dataset's own output folder: shards are written here, then moved

Settings are DataComp's: 512 px, ``keep_ratio_largest``, resized only if bigger, 8-digit shard names,
uid saved, sha256 of the downloaded bytes computed and checked against the metadata's ``sha256`` column
when it has one, faces blurred from ``face_bboxes`` when it has that column.

Metadata files are named after the tar shard they describe, so the Pool reader's per-shard joins hold;
rows are matched to the tar through img2dataset's sample key (shard * 10**k + row in the shard), never
through download order. A shard becomes visible only whole: img2dataset writes into the staging folder,
and a finished shard (its ``_stats.json`` exists) is moved into place with renames. A rerun skips
published shards and lets img2dataset's incremental mode fetch only the shards that are not finished.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError, StageError
from siftbench.benchmark.core.stage import fingerprint, stage_folder
from siftbench.benchmark.core.tars import TarSamples, sample_uid
from siftbench.benchmark.core.uids import hex_to_uids

STAGE_VERSION = 1  # bump whenever the pool's files change for the same inputs and settings
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
STAGING = ".download"
SHARD_DIGITS = 8  # DataComp's shard names: shards/00000000.tar
# DataComp's metadata columns; the ones a metadata folder lacks are reported, never invented.
DATACOMP_COLUMNS = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
                    "clip_l14_similarity_score", "face_bboxes", "sha256")

# img2dataset reports failures as free text (exception messages); these are the reasons we count.
FAILURE_REASONS: dict[str, str] = {
    "http_<code>": "the server answered with that HTTP error (e.g. http_404: the link is dead)",
    "sha256_mismatch": "the bytes differ from the metadata's sha256: the image changed or arrived damaged",
    "truncated": "the connection closed before the announced length (IncompleteRead)",
    "not_decodable": "the bytes are not an image OpenCV can decode: an HTML page, a truncated or damaged file",
    "timeout": "no answer within --timeout seconds",
    "connection_error": "DNS failure, refused or reset connection, TLS error",
    "disallowed": "the server's X-Robots-Tag forbids use (noai, noindex, ...)",
    "rejected_size": "img2dataset's size or aspect-ratio limits (off at DataComp's settings)",
    "resize_error": "decoded, but resizing or re-encoding failed",
    "other": "anything else; the raw message is counted under error_messages",
}
_REASON_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^hash mismatch$"), "sha256_mismatch"),
    (re.compile(r"IncompleteRead"), "truncated"),
    (re.compile(r"^Image decoding error$"), "not_decodable"),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"X-Robots-Tag"), "disallowed"),
    (re.compile(r"^image too small$|^image area too large$|^aspect ratio too large$"), "rejected_size"),
    (re.compile(r"urlopen error|Connection|Remote end closed|Name or service|SSL|EOF occurred", re.I),
     "connection_error"),
    (re.compile(r"cv2|OpenCV|albumentations", re.I), "resize_error"),
]
_HTTP = re.compile(r"^HTTP Error (\d{3})")


def failure_reason(error_message: str | None) -> str:
    """One of FAILURE_REASONS for an img2dataset error message (``http_404`` for HTTP errors)."""
    message = (error_message or "").strip()
    if match := _HTTP.match(message):
        return f"http_{match.group(1)}"
    for pattern, reason in _REASON_PATTERNS:
        if pattern.search(message):
            return reason
    return "other"


@dataclass(frozen=True)
class PlannedShard:
    """One img2dataset shard: rows [start, stop) of one input file (img2dataset's Reader cuts them so)."""

    shard_id: int
    source: Path
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.shard_id:0{SHARD_DIGITS}d}"


def download_pool(
    metadata_dir: str | Path,
    out: str | Path,
    *,
    distributor: str = "multiprocessing",
    processes: int | None = None,
    threads: int = 64,
    samples_per_shard: int = 10_000,
    image_size: int = 512,
    verify_hash: bool = True,
    blur_faces: bool = True,
    timeout: int = 10,
    retries: int = 0,
    url_col: str = "url",
    caption_col: str = "text",
) -> dict[str, Any]:
    """Download the images of ``metadata_dir/*.parquet`` into a pool at ``out``; return (and write) the stats.

    Rerunning the same call resumes: published shards are skipped, unfinished ones fetched again.
    ``distributor``: ``multiprocessing`` (this machine, ``processes`` processes x ``threads`` threads),
    ``ray`` (the cluster at ``RAY_ADDRESS``, or a local one) or ``pyspark`` (the active Spark session, or
    a local one). Raises StageError when a shard is still unfinished after img2dataset returns.
    """
    started = time.perf_counter()
    metadata_dir, out = Path(metadata_dir).resolve(), Path(out).resolve()
    processes = processes or os.cpu_count() or 1
    if distributor not in DISTRIBUTORS:
        raise StageError(f"download: unknown distributor {distributor!r}; choose one of {', '.join(DISTRIBUTORS)}")
    if samples_per_shard < 1 or processes < 1 or threads < 1:
        raise StageError("download: samples_per_shard, processes and threads must be >= 1")
    if (out / "metadata").resolve() == metadata_dir:
        raise StageError(
            f"download: the input metadata {metadata_dir} is the output's metadata/ folder; the pool writes one "
            "metadata file per tar shard there, so download into another folder (--out)"
        )
    files, schema = _input_files(metadata_dir, url_col, caption_col)
    plan = plan_shards(files, samples_per_shard)
    settings = {
        "image_size": image_size, "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True,
        "encode_format": "jpg", "samples_per_shard": samples_per_shard, "oom_shard_count": SHARD_DIGITS,
        "compute_hash": "sha256", "verify_hash": bool(verify_hash and "sha256" in schema.names),
        "blur_faces": bool(blur_faces and "face_bboxes" in schema.names), "url_col": url_col,
        "caption_col": caption_col,
    }
    # What decides the shards' contents; where the metadata sits and how fast shards are fetched
    # (processes, threads, timeout) may change between runs.
    inputs = {"metadata_files": [[f.name, _input_file_rows(f)] for f in files], "settings": settings}
    with stage_folder(out, fingerprint("download", STAGE_VERSION, inputs), on_change="refuse", what="a pool",
                      fix="download into a new folder, or delete that one to start over",
                      check_unclaimed=_no_foreign_pool):
        staging = out / STAGING / "img2dataset"
        staging.mkdir(parents=True, exist_ok=True)
        # A finished shard's marker stays in staging too: img2dataset's incremental mode skips shards by it.
        for shard in plan:
            published = out / "shards" / f"{shard.name}_stats.json"
            if published.exists() and not (staging / published.name).exists():
                shutil.copyfile(published, staging / published.name)
        todo = [s for s in plan if not (staging / f"{s.name}_stats.json").exists()]

        if todo:
            _check_distributor(distributor)
            _run_img2dataset(metadata_dir, staging, settings, distributor=distributor, processes=processes,
                             threads=threads, timeout=timeout, retries=retries)
        unpaired, cache = 0, {}
        for shard in _iter_finished(plan, out, staging):
            unpaired += _publish(shard, out, staging, settings, cache)
        missing = [s.name for s in plan if not (out / "shards" / f"{s.name}_stats.json").exists()]
        stats = _collect_stats(out, plan, schema, settings, metadata_dir)
        stats["this_run"] = {
            "shards_downloaded": len(todo) - len(missing), "shards_already_done": len(plan) - len(todo),
            "rows_requested": sum(s.stop - s.start for s in todo), "distributor": distributor,
            "processes": processes, "threads": threads, "timeout": timeout, "retries": retries,
            "seconds": round(time.perf_counter() - started, 3),
        }
        stats["unpaired"] = unpaired
        stats["unfinished_shards"] = missing
        write_json(out / "download_stats.json", stats)
        if missing:
            raise StageError(
                f"download: img2dataset returned but {len(missing)} of {len(plan)} shards have no stats file "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): they failed, or the "
                f"{distributor!r} distributor ran nothing; rerun the same command to retry them"
            )
        return stats


def plan_shards(files: list[Path], samples_per_shard: int) -> list[PlannedShard]:
    """The shards img2dataset makes of these files: consecutive ids, ``samples_per_shard`` rows each per file."""
    plan: list[PlannedShard] = []
    for f in files:
        rows = _input_file_rows(f)
        for k in range(math.ceil(rows / samples_per_shard)):
            plan.append(PlannedShard(len(plan), f, k * samples_per_shard, min(rows, (k + 1) * samples_per_shard)))
    return plan


def _input_files(metadata_dir: Path, url_col: str, caption_col: str) -> tuple[list[Path], pa.Schema]:
    if not metadata_dir.is_dir():
        raise PoolError(f"download: metadata folder {metadata_dir} does not exist")
    # img2dataset sorts the paths as strings; so do we, because shard ids follow that order.
    files = sorted(metadata_dir.glob("*.parquet"), key=str)
    if not files:
        raise PoolError(f"download: no *.parquet in {metadata_dir}; DataComp's metadata has uid, url, text columns")
    schema = _input_schema(files[0])
    for f in files[1:]:
        if _input_schema(f).names != schema.names:
            raise PoolError(f"download: {f.name} has columns {_input_schema(f).names}, {files[0].name} has "
                            f"{schema.names}; every metadata file needs the same columns")
        _input_file_rows(f)
    missing = [c for c in ("uid", url_col, caption_col) if c not in schema.names]
    if missing:
        raise PoolError(f"download: {files[0]} lacks column(s) {missing}; it has {schema.names} "
                        "(name other url/caption columns with --url-col / --caption-col)")
    return files, schema


def _input_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise _unreadable_input(path, e) from None


def _input_file_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise _unreadable_input(path, e) from None


def _unreadable_input(path: Path, error: Exception) -> PoolError:
    reason = " ".join(str(error).split())  # pyarrow's messages run over several lines
    return PoolError(f"download: {path}: unreadable ({reason}); replace it with a good copy of the metadata file")


def _no_foreign_pool(out: Path) -> None:
    if any((out / "shards").glob("*.tar")):
        raise StageError(f"download: {out} already holds a pool that no stage.json describes (made by an older "
                         "siftbench or another tool); download into a new folder, or delete that one to start over")


def _check_distributor(distributor: str) -> None:
    # img2dataset's ray distributor silently does nothing when ray is missing, and its pyspark one fails
    # deep inside; say so before any work starts.
    module = {"ray": "ray", "pyspark": "pyspark"}.get(distributor)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError as e:
        hint = "ray[default]" if module == "ray" else "pyspark"
        raise StageError(
            f"download: distributor {distributor!r} needs {module}, which is not importable ({e}); "
            f"install it (`pip install '{hint}'`) or use --distributor multiprocessing"
        ) from None


def _run_img2dataset(metadata_dir: Path, staging: Path, settings: dict[str, Any], *, distributor: str,
                     processes: int, threads: int, timeout: int, retries: int) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import otherwise
    from img2dataset import download  # heavy, optional (siftbench[download])

    bbox_col = "face_bboxes" if settings["blur_faces"] else None
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with _ray_session(distributor, processes):
            download(
                url_list=str(metadata_dir), input_format="parquet", url_col=settings["url_col"],
                caption_col=settings["caption_col"], output_format="webdataset", output_folder=str(staging),
                processes_count=processes, thread_count=threads, image_size=settings["image_size"],
                resize_mode="keep_ratio_largest", resize_only_if_bigger=True, encode_format="jpg",
                number_sample_per_shard=settings["samples_per_shard"], oom_shard_count=SHARD_DIGITS,
                save_additional_columns=["uid"], bbox_col=bbox_col, compute_hash="sha256",
                verify_hash=["sha256", "sha256"] if settings["verify_hash"] else None,
                distributor=distributor, timeout=timeout, retries=retries,
                incremental_mode="incremental", enable_wandb=False,
            )
    except SystemExit as e:  # img2dataset's SIGINT handler exits 0; that is an interruption, not success
        raise KeyboardInterrupt from e
    finally:
        signal.signal(signal.SIGINT, previous_handler)


@contextmanager
def _ray_session(distributor: str, processes: int) -> Iterator[None]:
    """Start a local Ray with ``processes`` CPUs unless one is running or RAY_ADDRESS names a cluster."""
    if distributor != "ray":
        yield
        return
    import ray  # heavy, optional (siftbench[ray])

    owned = not ray.is_initialized()
    if owned:
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": processes}
        ray.init(include_dashboard=False, **local)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def _iter_finished(plan: list[PlannedShard], out: Path, staging: Path) -> Iterator[PlannedShard]:
    """The shards img2dataset finished that are not published yet."""
    for shard in plan:
        if (staging / f"{shard.name}_stats.json").exists() and not (out / "shards" / f"{shard.name}_stats.json").exists():
            yield shard


def _input_rows(shard: PlannedShard, cache: dict[str, Any]) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The input file's rows and npz arrays; consecutive shards come from the same file, so keep the last one."""
    if cache.get("path") != shard.source:
        cache.clear()
        try:
            table = pq.read_table(shard.source, use_threads=False)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise _unreadable_input(shard.source, e) from None
        cache["path"], cache["table"], cache["npz"] = shard.source, table, {}
        npz_path = shard.source.with_suffix(".npz")
        if npz_path.exists():
            try:
                with np.load(npz_path, allow_pickle=False) as z:
                    cache["npz"] = {k: z[k] for k in z.files if k != "uid"}
            except Exception as e:  # not a zip, a damaged or pickled member: zipfile, zlib and numpy errors
                raise _unreadable_input(npz_path, e) from None
            for key, array in cache["npz"].items():
                if len(array) != cache["table"].num_rows:
                    raise PoolError(f"download: {npz_path} {key} has {len(array)} rows, {shard.source.name} has "
                                    f"{cache['table'].num_rows}; the npz must follow the parquet's rows")
    return cache["table"], cache["npz"]


def _publish(shard: PlannedShard, out: Path, staging: Path, settings: dict[str, Any], cache: dict[str, Any]) -> int:
    """Move one finished shard into the pool and write its metadata; return how many rows were unpaired.

    Order matters for a crash at any point: embeddings, tar, img2dataset's parquet, metadata, and the
    stats file last. Until that last rename the shard counts as unpublished and a rerun redoes this.
    """
    shards_dir, meta_dir = out / "shards", out / "metadata"
    shards_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    name = shard.name
    tar_path = _located(f"{name}.tar", staging, shards_dir)
    i2d_path = _located(f"{name}.parquet", staging, shards_dir)
    results = pq.read_table(i2d_path, columns=["key", "uid", "status", "width", "height", "original_width",
                                               "original_height", "sha256"]).to_pylist()
    in_tar = _tar_uids(tar_path, staging)
    oom = math.ceil(math.log10(settings["samples_per_shard"]))
    by_row: dict[int, dict[str, Any]] = {}
    for r in results:
        if r["status"] == "success" and r["key"] in in_tar:
            by_row[int(r["key"]) % 10**oom] = r
    # A sample in the tar img2dataset's table calls failed, or the reverse, is left out and counted.
    unpaired = len({r["key"] for r in results if r["status"] == "success"} ^ set(in_tar))
    rows = sorted(by_row)
    table, npz = _input_rows(shard, cache)
    picked = table.take(pa.array([shard.start + i for i in rows], pa.int64()))
    for i, uid in zip(rows, picked.column("uid").to_pylist(), strict=True):
        if in_tar[by_row[i]["key"]] != str(uid):
            raise StageError(f"download: {tar_path} key {by_row[i]['key']} holds uid {in_tar[by_row[i]['key']]}, "
                             f"but row {shard.start + i} of {shard.source.name} is uid {uid}; the input changed "
                             "since the download started: download into a new folder")
    picked = _pool_columns(picked, [by_row[i] for i in rows], settings)
    if npz:
        positions = np.asarray([shard.start + i for i in rows], dtype=np.int64)
        with atomic_path(meta_dir / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, uid=hex_to_uids(picked.column("uid")),
                     **{k: v[positions] for k, v in npz.items()})
    os.replace(tar_path, shards_dir / f"{name}.tar")
    os.replace(i2d_path, shards_dir / f"{name}.parquet")
    with atomic_path(meta_dir / f"{name}.parquet") as tmp:
        pq.write_table(picked, tmp)
    with atomic_path(shards_dir / f"{name}_stats.json") as tmp:
        shutil.copyfile(staging / f"{name}_stats.json", tmp)
    return unpaired


def _located(filename: str, staging: Path, shards_dir: Path) -> Path:
    for folder in (staging, shards_dir):  # shards_dir: a previous publish moved it, then stopped
        if (folder / filename).exists():
            return folder / filename
    raise StageError(f"download: img2dataset marked {filename.split('.')[0]} finished but wrote no {filename} in "
                     f"{staging}; delete {staging / filename.split('.')[0]}_stats.json and rerun")


def _tar_uids(path: Path, staging: Path) -> dict[str, str]:
    """key -> uid for every sample of the tar that has an image (img2dataset writes .jpg)."""
    samples = TarSamples(path, warn=False)
    uids = {key: sample_uid(sample) or "" for key, sample in samples if "jpg" in sample}
    if samples.damage:  # img2dataset has just written it: fetch it again rather than publish a damaged shard
        raise StageError(f"download: {samples.damage.describe()}; delete {staging / path.stem}_stats.json and "
                         "rerun the same command to fetch this shard again")
    return uids


def _pool_columns(picked: pa.Table, results: list[dict[str, Any]], settings: dict[str, Any]) -> pa.Table:
    """Input columns under the pool's names, plus img2dataset's key and stored size; original sizes and
    sha256 measured by the download when the input lacks them."""
    renames = {settings["url_col"]: "url", settings["caption_col"]: "text"}
    picked = picked.rename_columns([renames.get(c, c) for c in picked.column_names])
    measured = {"key": pa.string(), "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(),
                "original_height": pa.int32(), "sha256": pa.string()}
    for column, kind in measured.items():
        if column not in picked.column_names:
            picked = picked.append_column(column, pa.array([r[column] for r in results], kind))
    return picked


def _collect_stats(out: Path, plan: list[PlannedShard], schema: pa.Schema, settings: dict[str, Any],
                   metadata_dir: Path) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    published = 0
    for shard in plan:
        path = out / "shards" / f"{shard.name}.parquet"
        if not (out / "shards" / f"{shard.name}_stats.json").exists():
            continue
        published += 1
        table = pq.read_table(path, columns=["status", "error_message"])
        for status, message in zip(table.column("status").to_pylist(), table.column("error_message").to_pylist(),
                                   strict=True):
            statuses[status] += 1
            if status != "success":
                reasons[failure_reason(message)] += 1
                messages[str(message)] += 1
    pool_rows = sum(pq.ParquetFile(out / "metadata" / f"{s.name}.parquet").metadata.num_rows
                    for s in plan if (out / "metadata" / f"{s.name}.parquet").exists())
    attempted = sum(statuses.values())
    renames = {settings["url_col"]: "url", settings["caption_col"]: "text"}
    renamed = [renames.get(c, c) for c in schema.names]
    return {
        "metadata_dir": str(metadata_dir), "pool": str(out), "img2dataset_version": version("img2dataset"),
        "settings": settings,
        "input_rows": sum(s.stop - s.start for s in plan), "shards": len(plan), "shards_published": published,
        "attempted": attempted, "downloaded": statuses["success"], "pool_rows": pool_rows,
        "failed": attempted - statuses["success"],
        "success_rate": round(statuses["success"] / attempted, 4) if attempted else None,
        "failures": dict(reasons.most_common()),
        "failure_reasons": {r: FAILURE_REASONS["http_<code>" if r.startswith("http_") else r] for r in reasons},
        "statuses": dict(statuses.most_common()),
        "error_messages": dict(messages.most_common(20)),
        "columns": {
            "present": schema.names,
            "missing_datacomp_columns": [c for c in DATACOMP_COLUMNS if c not in renamed],
            "measured_by_download": [c for c in ("original_width", "original_height", "sha256") if c not in schema.names],
        },
    }
