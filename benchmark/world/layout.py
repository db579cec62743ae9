"""Writing the world to disk in DataComp's and clip_benchmark's layouts.

    pool/metadata/{i:08d}.parquet     uid, url, text, original_width, original_height, sha256
    pool/shards/{i:08d}.tar           {key}.png, {key}.txt, {key}.json  (img2dataset's sample layout)
    pool/shards/{i:08d}.parquet       img2dataset's per-shard table (uid, key, status, caption, ...)
    pool/shards/{i:08d}_stats.json    img2dataset's per-shard counts
    eval/<task>/classnames.txt, zeroshot_classification_templates.txt, [dataset_type.txt],
    eval/<task>/test/nshards.txt, test/{0..N-1}.tar   {key}.png + {key}.cls | {key}.txt

Every writer returns ``{relative path: digest}``. A digest is the sha256 of the file's bytes, except for
parquet files, whose bytes carry the writing library's version: those are hashed by their rows, so the
world's content hash is the same wherever the same world is generated.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.atomic import atomic_path

from .render import apply_variant, encode_png, render, render_real_digit
from .sampling import Row
from .suite import EvalSet

METADATA_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
    ]
)
SHARD_TABLE_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("uid", pa.string()),
    ]
)
GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("shard", pa.int32()),
        ("key", pa.string()),
        ("kind", pa.string()),
        ("shape", pa.string()),
        ("colour", pa.string()),
        ("digit", pa.int8()),
        ("concept", pa.string()),
        ("defect", pa.string()),
        ("variant", pa.string()),
        ("language", pa.string()),
        ("source_uid", pa.string()),
        ("eval_task", pa.string()),
        ("eval_key", pa.string()),
    ]
)


def pixels(row: Row, palette: dict[str, Any], image_size: int) -> np.ndarray:
    """The image of a row: rendered (or a real sklearn digit), then its copy variant if it has one."""
    if row["source"] == "sklearn":
        img = render_real_digit(int(row["sklearn_index"]), image_size)
    else:
        img = render(row, int(row["width"]), int(row["height"]), palette)
    if row["variant"]:
        img = apply_variant(img, row["variant"], int(row["variant_seed"]))
    return img


def shard_key(shard: int, index: int, samples_per_shard: int) -> str:
    """img2dataset's key: 8-digit shard number, then the sample's index in the shard."""
    return f"{shard:08d}{index:0{max(4, len(str(samples_per_shard - 1)))}d}"


def write_pool_shard(
    root: str,
    folder: str,
    shard: int,
    rows: list[Row],
    palette: dict[str, Any],
    image_size: int,
    samples_per_shard: int,
) -> dict[str, str]:
    """One tar + its img2dataset parquet and stats + its metadata parquet, holding the same uids."""
    base = Path(root) / folder
    name = f"{shard:08d}"
    members: list[tuple[str, bytes]] = []
    meta: dict[str, list] = {f.name: [] for f in METADATA_SCHEMA}
    table: dict[str, list] = {f.name: [] for f in SHARD_TABLE_SCHEMA}
    for j, row in enumerate(rows):
        img = pixels(row, palette, image_size)
        png = encode_png(img)
        sha = hashlib.sha256(png).hexdigest()
        key = shard_key(shard, j, samples_per_shard)
        height, width = img.shape[:2]
        info = {
            "uid": row["uid"],
            "key": key,
            "caption": row["text"],
            "url": row["url"],
            "width": width,
            "height": height,
            "original_width": row["original_width"],
            "original_height": row["original_height"],
            "status": "success",
            "error_message": None,
            "sha256": sha,
        }
        members += [(f"{key}.png", png), (f"{key}.txt", row["text"].encode()), (f"{key}.json", _json(info))]
        for column in meta:
            meta[column].append(row["text"] if column == "text" else info[column])
        for column in table:
            table[column].append(info[column])
    stats = {
        "count": len(rows),
        "successes": len(rows),
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "status_dict": {"success": len(rows)},
    }
    return {
        **_write_tar(base / "shards" / f"{name}.tar", members, root),
        **_write_parquet(base / "shards" / f"{name}.parquet", table, SHARD_TABLE_SCHEMA, root),
        **_write_bytes(base / "shards" / f"{name}_stats.json", _json(stats, indent=2), root),
        **_write_parquet(base / "metadata" / f"{name}.parquet", meta, METADATA_SCHEMA, root),
    }


def write_eval_task(
    root: str, task: EvalSet, palette: dict[str, Any], image_size: int, samples_per_shard: int
) -> dict[str, str]:
    """One task in clip_benchmark's webdataset layout."""
    base = Path(root) / "eval" / task.name
    digests: dict[str, str] = {}
    if task.classnames:
        digests |= _write_bytes(
            base / "classnames.txt", "".join(f"{c}\n" for c in task.classnames).encode(), root
        )
        templates = "".join(f"{t}\n" for t in task.templates).encode()
        digests |= _write_bytes(base / "zeroshot_classification_templates.txt", templates, root)
    if task.type == "zeroshot_retrieval":
        digests |= _write_bytes(base / "dataset_type.txt", b"retrieval\n", root)
    chunks = [task.rows[i : i + samples_per_shard] for i in range(0, len(task.rows), samples_per_shard)]
    for n, chunk in enumerate(chunks):
        members = []
        for row in chunk:
            members.append((f"{row['key']}.png", encode_png(pixels(row, palette, image_size))))
            if "captions" in row:
                members.append((f"{row['key']}.txt", "\n".join(row["captions"]).encode()))
            else:
                members.append((f"{row['key']}.cls", str(row["label"]).encode()))
        digests |= _write_tar(base / "test" / f"{n}.tar", members, root)
    digests |= _write_bytes(base / "test" / "nshards.txt", f"{len(chunks)}\n".encode(), root)
    return digests


def write_ground_truth(root: str, rows: list[Row]) -> dict[str, str]:
    columns: dict[str, list] = {f.name: [] for f in GROUND_TRUTH_SCHEMA}
    for row in rows:
        digit = row["kind"] == "digit"
        values = {
            "uid": row["uid"],
            "shard": row["shard"],
            "key": row["key"],
            "kind": row["kind"],
            "shape": None if digit else row["shape"],
            "colour": row["colour"],
            "digit": row["digit"] if digit else None,
            "concept": row["concept"],
            "defect": row["defect"],
            "variant": row["defect_variant"],
            "language": row["language"],
            "source_uid": row["source_uid"],
            "eval_task": row["eval_task"],
            "eval_key": row["eval_key"],
        }
        for column, value in values.items():
            columns[column].append(value)
    return _write_parquet(Path(root) / "ground_truth.parquet", columns, GROUND_TRUTH_SCHEMA, root)


def write_json(root: str, relative: str, data: Any) -> dict[str, str]:
    return _write_bytes(Path(root) / relative, _json(data, indent=2), root)


# -- files and their digests ---------------------------------------------------------------------------


def _json(data: Any, indent: int | None = None) -> bytes:
    return (json.dumps(data, indent=indent, ensure_ascii=False) + ("\n" if indent else "")).encode()


def _rel(path: Path, root: str) -> str:
    return path.relative_to(root).as_posix()


def _write_bytes(path: Path, data: bytes, root: str) -> dict[str, str]:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {_rel(path, root): hashlib.sha256(data).hexdigest()}


def _write_tar(path: Path, members: list[tuple[str, bytes]], root: str) -> dict[str, str]:
    # Fixed mtime, owner and mode: the same content gives the same tar bytes.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return _write_bytes(path, buf.getvalue(), root)


def _write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema, root: str) -> dict[str, str]:
    table = pa.Table.from_pydict(columns, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    rows = json.dumps([schema.names, *zip(*columns.values(), strict=True)], ensure_ascii=False)
    return {_rel(path, root): hashlib.sha256(rows.encode()).hexdigest()}


def tree_hash(digests: dict[str, str]) -> str:
    """The world's content hash: sha256 over every file's relative path and digest, in path order."""
    text = "".join(f"{path}\t{digest}\n" for path, digest in sorted(digests.items()))
    return hashlib.sha256(text.encode()).hexdigest()
