"""Read a pool in DataComp's layout, shard by shard, with column projection.

    pool/
      metadata/{name}.parquet   uid, url, text, original_width, original_height, clip_*_similarity_score, sha256, ...
      metadata/{name}.npz       optional, same row order: b32_img, b32_txt, l14_img, l14_txt (float16)
      embeddings/{model}/{name}.npz   ours: uid + {model}_img, {model}_txt, {model}_similarity_score
      shards/{i:08d}.tar        webdataset: {key}.jpg|png|webp, {key}.txt, {key}.json (holds uid)
      shards/{i:08d}.parquet    img2dataset's per-shard table (uid, key, status, ...)

Our embeddings store their uid array, so they are joined on uid, never on row order. Derived arrays are
written per tar shard and read per metadata shard of the same name: true of the embedded world and of
pools `siftbench download` writes (it splits DataComp's hash-named metadata files per tar shard). A pool
from DataComp's own download script keeps the hash-named files: filters on metadata columns work on it,
derived arrays would need a uid -> tar index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .errors import MissingColumnError, PoolError
from .tars import IMAGE_EXTENSIONS, data_after_end, iter_tar_samples, sample_image, sample_uid  # noqa: F401 (moved)
from .uids import hex_to_uids


@dataclass
class ShardBatch:
    """One metadata shard, as a filter's map step sees it."""

    shard: str
    table: pd.DataFrame  # the requested columns ("uid", the hex strings, only if requested)
    uids: np.ndarray  # structured u8,u8, aligned with table rows
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (rows, dim)

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class Pool:
    root: Path
    metadata_files: list[Path]
    columns: list[str]

    @classmethod
    def open(cls, root: str | Path) -> Pool:
        root = Path(root)
        if not root.is_dir():
            raise PoolError(
                f"pool folder {root} does not exist; create one with `siftbench world` or point pool= at a "
                "DataComp pool (a folder with metadata/*.parquet)"
            )
        files = sorted((root / "metadata").glob("*.parquet"))
        if not files:
            raise PoolError(
                f"pool {root}: no metadata/*.parquet files; a DataComp pool has metadata/<name>.parquet with "
                "uid, text, ... columns (download it with DataComp's download_upstream.py --skip_shards)"
            )
        columns = pq.read_schema(files[0]).names
        if "uid" not in columns:
            raise PoolError(f"{files[0]}: no 'uid' column; columns are {columns}")
        return cls(root=root, metadata_files=files, columns=columns)

    @property
    def shard_names(self) -> list[str]:
        return [f.stem for f in self.metadata_files]

    @property
    def tar_files(self) -> list[Path]:
        return sorted((self.root / "shards").glob("*.tar"))

    def derived_dirs(self) -> list[Path]:
        """Our per-sample derived data, one folder per model or feature extractor (embeddings/<key>/)."""
        return sorted(d for d in (self.root / "embeddings").glob("*") if d.is_dir())

    def embedding_keys(self) -> list[str]:
        """Per-row arrays available for every shard: the pool's own npz keys (b32_img, ...) plus ours,
        named ``<key>_img``, ``<key>_txt`` or ``<key>_<array>`` for other features (e.g. ``imagehash_phash``)."""
        keys: list[str] = []
        own = self.root / "metadata" / f"{self.shard_names[0]}.npz"
        if own.exists():
            with np.load(own, allow_pickle=False) as z:
                keys += [k for k in z.files if k != "uid"]
        for folder in self.derived_dirs():
            first = next(iter(sorted(folder.glob("*.npz"))), None)
            if first is not None:
                with np.load(first, allow_pickle=False) as z:
                    keys += [_derived_name(folder.name, k) for k in z.files if k not in ("uid", "similarity")]
        return keys

    def score_columns(self) -> list[str]:
        """Similarity-score columns our embed stage added beside the metadata."""
        return [f"clip_{d.name}_similarity_score" for d in self.derived_dirs()]

    def available(self) -> list[str]:
        return self.columns + [c for c in self.score_columns() if c not in self.columns]

    def check_requirements(self, who: str, columns: Sequence[str], embeddings: Sequence[str]) -> None:
        missing = [c for c in columns if c not in self.available()]
        if missing:
            raise MissingColumnError(
                f"{who} needs column(s) {missing} but pool {self.root} has {self.available()}; "
                "compute scores with `siftbench embed` or choose another column"
            )
        have = self.embedding_keys()
        missing = [e for e in embeddings if e not in have]
        if missing:
            raise MissingColumnError(
                f"{who} needs embedding(s) {missing} but pool {self.root} has {have or 'none'}; "
                "compute them with `siftbench embed POOL --model ...`"
            )

    def read_shard(
        self, shard: str, columns: Sequence[str] = (), embeddings: Sequence[str] = ()
    ) -> ShardBatch:
        """Read one metadata shard: only the requested columns, plus uid, plus requested embeddings."""
        path = self.root / "metadata" / f"{shard}.parquet"
        own_columns = [c for c in columns if c in self.columns and c != "uid"]
        try:
            table = pq.read_table(path, columns=["uid", *own_columns], use_threads=False)  # threads cost more than they save per shard
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise PoolError(f"{path}: unreadable parquet ({e}); re-download or regenerate this shard") from e
        try:
            uids = hex_to_uids(table.column("uid"))
        except ValueError as e:
            raise PoolError(f"{path}: {e}") from None
        # Hex uid strings are expensive as Python objects; filters get the parsed words in ``uids``.
        frame = table.drop_columns(["uid"] if "uid" not in columns else []).to_pandas()
        extra_scores = [c for c in columns if c not in self.columns]
        folders = {d.name: d for d in self.derived_dirs()}
        wanted = [*embeddings, *extra_scores]
        emb: dict[str, np.ndarray] = {}
        for key in sorted({_owner(w, folders) for w in wanted} - {None}):
            arrays = _load_aligned(folders[key] / f"{shard}.npz", uids, key)
            for name in wanted:
                if name in arrays:
                    if name in extra_scores:
                        frame[name] = arrays[name]
                    else:
                        emb[name] = arrays[name]
        own_npz = self.root / "metadata" / f"{shard}.npz"
        pending = [e for e in embeddings if e not in emb]
        if pending and own_npz.exists():
            with np.load(own_npz, allow_pickle=False) as z:
                for key in pending:
                    if key in z.files:
                        emb[key] = _check_rows(z[key], len(frame), own_npz, key)
        for key in embeddings:
            if key not in emb:
                raise MissingColumnError(f"shard {shard}: embedding {key!r} not found in {own_npz} or embeddings/")
        return ShardBatch(shard=shard, table=frame, uids=uids, embeddings=emb)

    def iter_shards(self, columns: Sequence[str] = (), embeddings: Sequence[str] = ()) -> Iterator[ShardBatch]:
        for shard in self.shard_names:
            yield self.read_shard(shard, columns, embeddings)

    def all_uids(self) -> np.ndarray:
        return np.concatenate([self.read_shard(s).uids for s in self.shard_names])

    def __len__(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.metadata_files)

    def fingerprint(self) -> str:
        """sha256 of the metadata files' names and row counts: cheap, and changes when the pool does."""
        h = hashlib.sha256()
        for f in self.metadata_files:
            h.update(f"{f.name}:{pq.ParquetFile(f).metadata.num_rows}\n".encode())
        return h.hexdigest()


def _check_rows(array: np.ndarray, rows: int, path: Path, key: str) -> np.ndarray:
    if len(array) != rows:
        raise PoolError(
            f"{path}: {key} has {len(array)} rows but its parquet has {rows}; the pair is out of sync, "
            "recompute the embeddings for this shard"
        )
    return array


def _derived_name(key: str, array: str) -> str:
    special = {"image": f"{key}_img", "text": f"{key}_txt", "similarity": f"clip_{key}_similarity_score"}
    return special.get(array, f"{key}_{array}")


def _owner(name: str, folders: dict[str, Path]) -> str | None:
    """Which embeddings/<key>/ folder provides this column or array (longest matching key wins)."""
    for key in sorted(folders, key=len, reverse=True):
        if name == f"clip_{key}_similarity_score" or name.startswith(f"{key}_"):
            return key
    return None


def _load_aligned(path: Path, uids: np.ndarray, key: str) -> dict[str, np.ndarray]:
    """Load one of our npz files (which carry their uids) with rows reordered to the metadata's uids."""
    if not path.exists():
        raise PoolError(f"{path}: missing; rerun the stage that writes {path.parent.name} for this shard")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "uid" not in arrays:
        raise PoolError(f"{path}: no 'uid' array; siftbench embeddings always store the uids they belong to")
    stored = arrays.pop("uid")
    if len(stored) != len(uids):
        raise PoolError(
            f"{path}: {len(stored)} rows but its metadata shard has {len(uids)}; the pair is out of sync, "
            f"delete {path.name} and rerun the stage that wrote {path.parent.name}/"
        )
    order = _align(stored, uids, path)
    return {_derived_name(key, k): v[order] for k, v in arrays.items()}


def _align(stored: np.ndarray, wanted: np.ndarray, path: Path) -> np.ndarray:
    sv = np.ascontiguousarray(stored).view(np.dtype((np.void, 16))).ravel()
    wv = np.ascontiguousarray(wanted).view(np.dtype((np.void, 16))).ravel()
    sort = np.argsort(sv)
    pos = np.searchsorted(sv[sort], wv)
    pos = np.minimum(pos, len(sv) - 1)
    found = sort[pos]
    ok = sv[found] == wv
    if not ok.all():
        raise PoolError(
            f"{path}: {int((~ok).sum())} of {len(wanted)} metadata uids have no embedding; "
            "rerun `siftbench embed` to complete this shard"
        )
    return found
