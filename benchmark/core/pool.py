"""Read a pool in DataComp's layout, shard by shard, with column projection.

    pool/
      metadata/{name}.parquet   uid, url, text, original_width, original_height, clip_*_similarity_score, sha256, ...
      metadata/{name}.npz       optional, same row order: b32_img, b32_txt, l14_img, l14_txt (float16)
      embeddings/{key}/{tar}.npz   derived arrays, one file per tar: uid + image, text, similarity (ours), ...
      embeddings/{key}/join/    where each metadata row's derived row is: built on first use, see below
      shards/{i:08d}.tar        webdataset: {key}.jpg|png|webp, {key}.txt, {key}.json (holds uid)
      shards/{i:08d}.parquet    img2dataset's per-shard table (uid, key, status, ...)

Derived arrays carry their uids and are joined to the metadata by uid, whatever the files are called and
however they are cut: one metadata file per tar (the embedded world, `siftbench download`), one for many
tars (DataComp's own download keeps its hash-named metadata files), or several for one. The join is
built once per key from the uid arrays alone and kept in ``embeddings/{key}/join/`` with the stage
bookkeeping: ``join/<metadata shard>.npy`` gives each metadata row its row among the key's npz files (in
name order; -1: none), and ``join/stage.json`` names the npz and metadata files it was built from, so any
change to them rebuilds it. A metadata uid without a derived row reads as NaN (float arrays) or 0
(integer arrays; such features carry an ``ok`` flag); a derived row whose uid the metadata lacks is
counted and never read; when a uid has several derived rows, the first one (files in name order) wins.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json
from .errors import MissingColumnError, PoolError
from .stage import STAGE_FILE, fingerprint, stage_folder
from .tars import IMAGE_EXTENSIONS, data_after_end, iter_tar_samples, sample_image, sample_uid  # noqa: F401 (moved)
from .uids import UID_DTYPE, hex_to_uids

JOIN_FOLDER = "join"
JOIN_VERSION = 1  # bump whenever the join's files change for the same inputs
PER_TAR_STAGES = ("embed", "image_features")  # the stages that write embeddings/<key>/<tar>.npz


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
class DerivedJoin:
    """Where the metadata rows of a pool find their rows in one ``embeddings/<key>/`` folder.

    ``counts``: metadata_rows, joined (metadata rows with a derived row), missing (without one),
    derived_rows, not_in_metadata (derived rows whose uid no metadata row has), duplicate_derived_rows
    (further rows of a uid that already has one: never read).
    """

    folder: Path
    files: list[str]  # the npz files, in name order
    offsets: np.ndarray  # row offsets of each file in the files' concatenation (len(files) + 1)
    counts: dict[str, int]

    @property
    def index_dir(self) -> Path:
        return self.folder / JOIN_FOLDER


@dataclass
class Pool:
    root: Path
    metadata_files: list[Path]
    columns: list[str]
    # Derived folders' joins, checked once per Pool (and carried to the workers it is pickled to).
    _joins: dict[str, DerivedJoin] = field(default_factory=dict, repr=False, compare=False)

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
        try:
            columns = pq.read_schema(files[0]).names
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise _unreadable(files[0], e) from None
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
            with _open_npz(own, _METADATA_NPZ_FIX) as z:
                keys += [k for k in z.files if k != "uid"]
        for folder in self.derived_dirs():
            first = next(iter(sorted(folder.glob("*.npz"))), None)
            if first is not None:
                with _open_npz(first) as z:
                    keys += [_derived_name(folder.name, k) for k in z.files if k not in ("uid", "similarity")]
        return keys

    def score_columns(self) -> list[str]:
        """Similarity-score columns our embed stage added beside the metadata."""
        return [f"clip_{d.name}_similarity_score" for d in self.derived_dirs()]

    def available(self) -> list[str]:
        return self.columns + [c for c in self.score_columns() if c not in self.columns]

    def check_requirements(self, who: str, columns: Sequence[str], embeddings: Sequence[str]) -> None:
        """Raise unless the pool serves these columns and arrays; build the uid joins of the derived
        folders they come from (once, here, rather than in every worker that reads a shard)."""
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
        folders = {d.name: d for d in self.derived_dirs()}
        derived = [c for c in columns if c not in self.columns] + list(embeddings)
        for key in sorted({_owner(name, folders) for name in derived} - {None}):
            self.join(key)

    def join(self, key: str) -> DerivedJoin:
        """The uid join of ``embeddings/<key>/`` to the metadata: built on first use, then reused while
        the npz and metadata files it was built from are unchanged (``join/stage.json``)."""
        if key not in self._joins:
            self._joins[key] = _derived_join(self, self.root / "embeddings" / key)
        return self._joins[key]

    def read_shard(
        self, shard: str, columns: Sequence[str] = (), embeddings: Sequence[str] = ()
    ) -> ShardBatch:
        """Read one metadata shard: only the requested columns, plus uid, plus requested embeddings."""
        path = self.root / "metadata" / f"{shard}.parquet"
        own_columns = [c for c in columns if c in self.columns and c != "uid"]
        table = _read_parquet(path, ["uid", *own_columns])
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
            names = [w for w in wanted if _owner(w, folders) == key]
            arrays = _joined(self.join(key), shard, uids, names)
            for name in names:
                if name in extra_scores:
                    frame[name] = arrays[name]
                else:
                    emb[name] = arrays[name]
        own_npz = self.root / "metadata" / f"{shard}.npz"
        pending = [e for e in embeddings if e not in emb]
        if pending and own_npz.exists():
            with _open_npz(own_npz, _METADATA_NPZ_FIX) as z:
                for key in pending:
                    if key in z.files:
                        emb[key] = _check_rows(_read_member(z, key, own_npz, _METADATA_NPZ_FIX), len(frame), own_npz, key)
        for key in embeddings:
            if key not in emb:
                raise MissingColumnError(f"shard {shard}: embedding {key!r} not found in {own_npz} or embeddings/")
        return ShardBatch(shard=shard, table=frame, uids=uids, embeddings=emb)

    def iter_shards(self, columns: Sequence[str] = (), embeddings: Sequence[str] = ()) -> Iterator[ShardBatch]:
        for shard in self.shard_names:
            yield self.read_shard(shard, columns, embeddings)

    def all_uids(self) -> np.ndarray:
        return np.concatenate([self.read_shard(s).uids for s in self.shard_names])

    def shard_rows(self) -> list[int]:
        """Rows of each metadata file (from the parquet footers), in shard order."""
        return [_parquet_rows(f) for f in self.metadata_files]

    def check_unique_uids(self, uids: np.ndarray) -> None:
        """Refuse a metadata that lists a uid more than once; ``uids``: every shard's uids in pool order.

        A subset would name such a uid twice, and reshard would then train two copies of it. The check
        sorts the high words only (about 0.3 s for 12.8M uids); the full uid is compared where they tie.
        """
        high = np.sort(uids["f0"])
        if not (high[1:] == high[:-1]).any():
            return
        tied = np.isin(uids["f0"], high[1:][high[1:] == high[:-1]])
        candidates = uids[tied]
        values, counts = np.unique(candidates, return_counts=True)
        repeated = values[counts > 1]
        if not len(repeated):
            return
        example = repeated[0]
        rows = np.flatnonzero((uids["f0"] == example["f0"]) & (uids["f1"] == example["f1"]))
        starts = np.cumsum([0, *self.shard_rows()])
        places = [f"{self.metadata_files[i].name} row {int(r - starts[i])}"
                  for r in rows[:3] for i in [int(np.searchsorted(starts, r, side="right") - 1)]]
        raise PoolError(
            f"pool {self.root}: {len(repeated):,} uid(s) appear more than once in metadata/*.parquet, e.g. "
            f"{int(example['f0']):016x}{int(example['f1']):016x} at {', '.join(places)}; a subset would name "
            "such a uid twice and training would see it twice. Keep one row per uid (e.g. pandas "
            "drop_duplicates('uid') over the metadata files) and rerun"
        )

    def __len__(self) -> int:
        return sum(self.shard_rows())

    def fingerprint(self) -> str:
        """sha256 of the metadata files' names and row counts: cheap, and changes when the pool does."""
        h = hashlib.sha256()
        for f in self.metadata_files:
            h.update(f"{f.name}:{_parquet_rows(f)}\n".encode())
        return h.hexdigest()


def _parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise _unreadable(path, e) from None


def _read_parquet(path: Path, columns: list[str]) -> Any:
    """These columns of one metadata file (an Arrow table), or a PoolError naming the file."""
    try:
        table = pq.read_table(path, columns=columns, use_threads=False)  # threads cost more than they save per shard
    except Exception as e:  # pyarrow raises several types for a damaged file
        try:
            names = pq.read_schema(path).names
        except Exception:  # damaged beyond its schema: the first error says it
            raise _unreadable(path, e) from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise PoolError(f"{path}: no {missing[0]!r} column; columns are {names} (every metadata file needs "
                            "the columns of the first)") from None
        raise _unreadable(path, e) from None
    return table


def _unreadable(path: Path, error: Exception) -> PoolError:
    reason = " ".join(str(error).split())  # pyarrow's messages run over several lines
    return PoolError(f"{path}: unreadable parquet ({reason}); re-download or regenerate this file")


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


def _member_name(key: str, name: str) -> str:
    """The npz member behind a derived column or array name (``_derived_name`` reversed)."""
    special = {f"{key}_img": "image", f"{key}_txt": "text", f"clip_{key}_similarity_score": "similarity"}
    return special.get(name, name[len(key) + 1:])


def _owner(name: str, folders: dict[str, Path]) -> str | None:
    """Which embeddings/<key>/ folder provides this column or array (longest matching key wins)."""
    for key in sorted(folders, key=len, reverse=True):
        if name == f"clip_{key}_similarity_score" or name.startswith(f"{key}_"):
            return key
    return None


_METADATA_NPZ_FIX = "re-download it with its parquet (the npz follows the parquet's rows)"


def _open_npz(path: Path, fix: str | None = None) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # a truncated or foreign file: zipfile, numpy and OS errors of many types
        raise PoolError(f"{path}: unreadable npz ({' '.join(str(e).split())}); "
                        f"{fix or _derived_fix(path)}") from None


def _read_member(z: Any, member: str, path: Path, fix: str | None = None) -> np.ndarray:
    try:
        return z[member]
    except KeyError:
        raise PoolError(f"{path}: no {member!r} array (it has {z.files}); every npz of {path.parent.name}/ must "
                        f"hold the same arrays: {fix or _derived_fix(path)}") from None
    except Exception as e:  # a damaged member, a pickle: zipfile, zlib or numpy errors
        raise PoolError(f"{path}: array {member!r} unreadable ({' '.join(str(e).split())}); "
                        f"{fix or _derived_fix(path)}") from None


def _derived_fix(path: Path) -> str:
    return f"delete it and rerun the stage that wrote {path.parent.name}/"


# -- the uid join of a derived folder -------------------------------------------------------------------


def _derived_join(pool: Pool, folder: Path) -> DerivedJoin:
    files = sorted(folder.glob("*.npz"))
    key = folder.name
    # Our stages write one file per tar, so a tar without one means the stage did not finish. Derived data
    # from elsewhere (no stage.json of ours) may be cut any way: one file per metadata file, say.
    tars = {t.stem for t in pool.tar_files}
    unmade = sorted(tars - {f.stem for f in files})
    made_by = _recorded(folder)
    if unmade and isinstance(made_by, dict) and made_by.get("stage") in PER_TAR_STAGES:
        raise PoolError(
            f"pool {pool.root}: embeddings/{key}/ has no npz for {len(unmade)} of the {len(tars)} tars in shards/ "
            f"(e.g. {unmade[0]}.npz for shards/{unmade[0]}.tar): the stage that writes it did not finish; rerun it "
            f"(`siftbench embed POOL --key {key}` for embeddings; image features are redone by `siftbench run`)"
        )
    if not files:
        raise PoolError(f"pool {pool.root}: {folder} holds no npz files; compute them (`siftbench embed POOL "
                        f"--key {key}`) or delete the empty folder")
    inputs = {"derived": {f.name: _identity(f) for f in files},
              "metadata": {f.name: _identity(f) for f in pool.metadata_files}}
    wanted = fingerprint("join", JOIN_VERSION, inputs)
    index_dir = folder / JOIN_FOLDER
    index = _read_index(index_dir) if _recorded(index_dir) == wanted else None
    if index is None:
        # Everything is read and checked before anything is written: a bad input leaves the pool as it was.
        rows, index = _compute_join(pool, files)
        try:
            with stage_folder(index_dir, wanted, on_change="restart", outputs=("*.npy", "index.json"),
                              what="the uid join to the metadata"):
                if _read_index(index_dir) is None:  # else another process wrote it meanwhile
                    for shard, shard_rows in zip(pool.shard_names, rows, strict=True):
                        with atomic_path(index_dir / f"{shard}.npy") as tmp, open(tmp, "wb") as f:
                            np.save(f, shard_rows, allow_pickle=False)
                    write_json(index_dir / "index.json", index)  # last: the join's completion marker
        except OSError as e:  # a read-only pool, a full disk
            raise PoolError(f"pool {pool.root}: cannot write the uid join of embeddings/{key}/ ({e}); siftbench "
                            f"keeps it in {index_dir}: make embeddings/{key}/ writable") from None
    return DerivedJoin(folder, index["files"], np.asarray(index["offsets"], dtype=np.int64), index["counts"])


def _recorded(folder: Path) -> Any:
    """What the folder's stage.json says made it (None: no stage.json)."""
    try:
        return json.loads((folder / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _read_index(index_dir: Path) -> dict[str, Any] | None:
    """The finished join's index.json, or None when there is none (or a damaged one: it is rebuilt)."""
    try:
        index = json.loads((index_dir / "index.json").read_text())
        return index if {"files", "offsets", "counts"} <= set(index) else None
    except (OSError, ValueError, TypeError):
        return None


def _identity(path: Path) -> dict[str, int]:
    # A file rewritten in place gets a new mtime, one renamed into place a new inode.
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _compute_join(pool: Pool, files: list[Path]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """For every metadata shard, each row's row in the npz files' concatenation (int64, -1 for none); and
    the join's index.json (files, row offsets, counts). Writes nothing.

    The npz uids are sorted once; each shard's uids are then found by binary search. 12.8M rows: about
    9 s on 2 cores, 0.8 GB at the peak."""
    highs, lows = [], []
    for path in files:
        uids = _derived_uids(path)
        highs.append(uids["f0"].copy())
        lows.append(uids["f1"].copy())
    offsets = np.cumsum([0, *map(len, highs)])
    derived = _SortedUids.of(highs, lows)
    used = np.zeros(len(derived.high), dtype=bool)  # by sorted position
    rows = []
    for path in pool.metadata_files:
        try:
            wanted = hex_to_uids(_read_parquet(path, ["uid"]).column("uid"))
        except ValueError as e:
            raise PoolError(f"{path}: {e}") from None
        found = derived.find(wanted)
        used[found[found >= 0]] = True
        rows.append(np.where(found >= 0, derived.order[found], -1))
    first = derived.firsts()
    counts = {"metadata_rows": sum(map(len, rows)), "joined": int(sum((r >= 0).sum() for r in rows))}
    counts.update(missing=counts["metadata_rows"] - counts["joined"], derived_rows=len(first),
                  not_in_metadata=int((first & ~used).sum()), duplicate_derived_rows=int((~first).sum()))
    return rows, {"files": [f.name for f in files], "offsets": offsets.tolist(), "counts": counts}


def _derived_uids(path: Path) -> np.ndarray:
    """The uid array of one derived npz, after checking every array in it from its header alone: no
    Python objects, as many rows as uids."""
    fix = _derived_fix(path)
    headers = _npz_headers(path)
    if "uid" not in headers:
        raise PoolError(f"{path}: no 'uid' array (it has {sorted(headers)}); siftbench's derived files store the "
                        f"uids of their rows: {fix}")
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise PoolError(f"{path}: {name!r} holds Python objects (a pickle), which siftbench never loads; {fix}")
    shape, dtype = headers["uid"]
    if dtype != UID_DTYPE or len(shape) != 1:
        raise PoolError(f"{path}: 'uid' has dtype {dtype} and shape {shape}, expected a 1-D {UID_DTYPE.descr} array "
                        f"(core.uids.hex_to_uids); {fix}")
    for name, (other, _) in headers.items():
        if not other or other[0] != shape[0]:
            raise PoolError(f"{path}: {name!r} has {other[0] if other else 0} rows but 'uid' has {shape[0]}; {fix}")
    with _open_npz(path) as z:
        return _read_member(z, "uid", path)


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every array of an npz, from the .npy headers (no array is read)."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, dtype = read(f)
                    headers[info.filename[:-4]] = (shape, dtype)
    except Exception as e:  # not a zip, a damaged member: zipfile, zlib and numpy errors of many types
        raise PoolError(f"{path}: unreadable npz ({' '.join(str(e).split())}); {_derived_fix(path)}") from None
    return headers


@dataclass
class _SortedUids:
    """Uids sorted by their high word, stably: of equal uids, the first row comes first."""

    order: np.ndarray  # the row at each sorted position
    high: np.ndarray
    low: np.ndarray

    @classmethod
    def of(cls, highs: list[np.ndarray], lows: list[np.ndarray]) -> _SortedUids:
        """From the uid words of consecutive files (the lists are emptied: one copy of the words at a time)."""
        high = np.concatenate(highs)
        highs.clear()
        order = np.argsort(high, kind="stable")
        high = high[order]
        low = np.concatenate(lows)
        lows.clear()
        return cls(order, high, low[order])

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """Sorted position of each of ``wanted`` (the first of equal uids), or -1."""
        found = np.full(len(wanted), -1, dtype=np.int64)
        if not len(wanted) or not len(self.high):
            return found
        query = np.argsort(wanted["f0"])  # sorted queries: the binary searches walk memory in order
        high, low = wanted["f0"][query], wanted["f1"][query]
        at = np.minimum(np.searchsorted(self.high, high), len(self.high) - 1)
        same_high = self.high[at] == high
        exact = same_high & (self.low[at] == low)
        found[query[exact]] = at[exact]
        # Rare: several uids share this high word, and the first of them is not the one wanted.
        for q, i in zip(query[same_high & ~exact].tolist(), at[same_high & ~exact].tolist(), strict=True):
            while i < len(self.high) and self.high[i] == wanted["f0"][q]:
                if self.low[i] == wanted["f1"][q]:
                    found[q] = i
                    break
                i += 1
        return found

    def firsts(self) -> np.ndarray:
        """Mask over sorted positions: the first row of its uid (the later ones are never read)."""
        first = np.ones(len(self.high), dtype=bool)
        tie = self.high[1:] == self.high[:-1]
        if tie.any():  # positions sharing a high word follow row order: the first of each whole uid wins
            tied = np.flatnonzero(np.concatenate([[False], tie]) | np.concatenate([tie, [False]]))
            pairs = np.empty(len(tied), dtype=UID_DTYPE)
            pairs["f0"], pairs["f1"] = self.high[tied], self.low[tied]
            _, firsts = np.unique(pairs, return_index=True)
            first[tied] = False
            first[tied[firsts]] = True
        return first


def _joined(join: DerivedJoin, shard: str, uids: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The derived arrays ``names`` for the rows of one metadata shard, gathered from the npz files that
    hold them; NaN (float) or 0 (integer) where a row has none."""
    key = join.folder.name
    path = join.index_dir / f"{shard}.npy"
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PoolError(f"{path}: unreadable ({e}); delete {join.index_dir} and rerun (it is rebuilt)") from None
    if rows.shape != (len(uids),):
        raise PoolError(f"{path}: {rows.shape} rows for {len(uids)} metadata rows; delete {join.index_dir} and "
                        "rerun (it is rebuilt)")
    members = {name: _member_name(key, name) for name in names}
    found = rows >= 0
    file_of = np.searchsorted(join.offsets, rows, side="right") - 1
    out: dict[str, np.ndarray] = {}
    for f in np.unique(file_of[found]).tolist() or [0]:  # file 0 gives dtypes and shapes when none is read
        path = join.folder / join.files[f]
        here = np.flatnonzero(found & (file_of == f))
        local = rows[here] - join.offsets[f]
        with _open_npz(path) as z:
            for name, member in members.items():
                array = _read_member(z, member, path)
                if len(array) != join.offsets[f + 1] - join.offsets[f]:
                    raise PoolError(f"{path}: {member!r} has {len(array)} rows but 'uid' has "
                                    f"{join.offsets[f + 1] - join.offsets[f]}; delete it and rerun the stage that "
                                    f"wrote {key}/")
                if name not in out:
                    fill = np.nan if array.dtype.kind in "fc" else 0
                    out[name] = np.full((len(uids), *array.shape[1:]), fill, dtype=array.dtype)
                out[name][here] = array[local]
    return out
