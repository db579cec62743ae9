"""uids: 128-bit hex strings in the pool, two uint64 words in a subset file.

A subset (the thing a filtering submission hands in) is DataComp's format: ``np.save`` of a 1-D
structured array of dtype ``("u8","u8")``, sorted ascending; a uid repeated k times means "train on
it k times".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .atomic import atomic_path
from .errors import SubsetError

UID_DTYPE = np.dtype("u8,u8")

_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i


def uid_to_words(uid: str) -> tuple[int, int]:
    """One hex uid -> (high, low) 64-bit words; short hex is left-padded, as DataComp's divmod does."""
    return divmod(int(uid, 16), 2**64)


def hex_to_uids(hexes: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hex uid strings -> structured ``u8,u8`` array, vectorised (tens of millions of uids per second).

    Equivalent to ``divmod(int(uid, 16), 2**64)`` for every uid (short hex is left-padded); raises
    ValueError naming the first uid that is missing, not hex, or longer than 32 digits.
    """
    arr = hexes if isinstance(hexes, pa.Array | pa.ChunkedArray) else pa.array(np.asarray(hexes, dtype=object))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return np.empty(0, dtype=UID_DTYPE)
    arr = arr.cast(pa.string())
    if arr.null_count:
        raise ValueError(f"uid at row {_first(pc.is_null(arr))} is missing (null)")
    too_long = pc.greater(pc.utf8_length(arr), 32)
    if pc.any(too_long).as_py():
        raise ValueError(f"uid {arr[_first(too_long)].as_py()!r} has more than 32 hex digits (uids are 128-bit)")
    original = arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if not (np.diff(offsets) == 32).all():  # short hex: left-pad to 32 digits, like int(uid, 16) reads it
        arr = pc.utf8_lpad(arr, width=32, padding="0")
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    # Every string is now exactly 32 bytes, so the data buffer is one long hex string: decode it in C.
    text = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].tobytes()
    try:
        words = np.frombuffer(bytes.fromhex(text.decode("ascii")), dtype=">u8").reshape(len(arr), 2)
    except (ValueError, UnicodeDecodeError):
        bad = (_NIBBLE[np.frombuffer(text, dtype=np.uint8).reshape(len(arr), 32)] == 255).any(axis=1)
        raise ValueError(f"uid {original[int(np.flatnonzero(bad)[0])].as_py()!r} is not a hex string") from None
    out = np.empty(len(arr), dtype=UID_DTYPE)
    out["f0"] = words[:, 0]
    out["f1"] = words[:, 1]
    return out


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def uids_to_hex(uids: np.ndarray) -> list[str]:
    """Structured ``u8,u8`` array -> 32-digit lowercase hex strings."""
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in zip(uids["f0"], uids["f1"], strict=True)]


def sort_uids(uids: np.ndarray) -> np.ndarray:
    """Ascending by (high, low) word."""
    # Sorting by the high word alone is ~2x faster than lexsort on both; equal high words with different
    # low words (a 64-bit collision, or crafted uids) fall back to the full lexsort.
    out = uids[np.argsort(uids["f0"], kind="stable")]
    same_hi = out["f0"][1:] == out["f0"][:-1]
    if (same_hi & (out["f1"][1:] < out["f1"][:-1])).any():
        out = uids[np.lexsort((uids["f1"], uids["f0"]))]
    return out


def validate_subset(uids: np.ndarray, where: str = "subset") -> np.ndarray:
    """Check a loaded subset against the DataComp contract; return it unchanged or raise SubsetError."""
    how = "write it with siftbench.benchmark.core.uids.write_subset"
    if uids.dtype.hasobject:
        raise SubsetError(f"{where}: holds Python objects (dtype {uids.dtype}); expected {UID_DTYPE.descr}; {how}")
    if uids.dtype != UID_DTYPE:
        raise SubsetError(f"{where}: dtype {uids.dtype}, expected {UID_DTYPE.descr}; {how}")
    if uids.ndim != 1:
        raise SubsetError(f"{where}: {uids.ndim}-D array, expected 1-D; {how}")
    if len(uids) > 1:
        hi, lo = uids["f0"], uids["f1"]
        descending = (hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))
        if descending.any():
            i = int(np.flatnonzero(descending)[0])
            raise SubsetError(f"{where}: not sorted ascending (first at index {i + 1}); {how}")
    return uids


def write_subset(path: str | Path, uids: np.ndarray) -> Path:
    """Sort and save a subset atomically in DataComp's format. Repeats are kept (they mean upsampling)."""
    uids = np.asarray(uids)
    if uids.dtype != UID_DTYPE:
        raise SubsetError(f"write_subset: dtype {uids.dtype}, expected {UID_DTYPE.descr}; convert with hex_to_uids")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, sort_uids(uids), allow_pickle=False)
    return path


def read_subset(path: str | Path) -> np.ndarray:
    """Load and validate a subset file; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"{path}: no such subset file")
    how = "a subset is a plain u8,u8 array, written with siftbench.benchmark.core.uids.write_subset"
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # np.load would try to unpickle anything else
            raise SubsetError(f"{path}: not a .npy file (no NumPy header; a pickle, npz or text file?); {how}")
    try:
        uids = np.load(path, allow_pickle=False)
    except ValueError as e:  # numpy refuses object arrays without allow_pickle, and says so
        if "allow_pickle" in str(e):
            raise SubsetError(f"{path}: holds pickled Python objects, which siftbench never unpickles; {how}") from None
        raise SubsetError(f"{path}: unreadable .npy ({e}); {how}") from None
    except (OSError, EOFError) as e:  # a header cut short, or not numpy's
        raise SubsetError(f"{path}: unreadable .npy ({e}); {how}") from None
    return validate_subset(uids, where=str(path))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def isin_uids(uids: np.ndarray, pool_uids: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``uids`` occur in ``pool_uids`` (both structured u8,u8)."""
    return np.isin(_as_void(uids), _as_void(pool_uids))


def _as_void(uids: np.ndarray) -> np.ndarray:
    # Two uint64 words compared as one 16-byte value; exact and fast for set operations.
    return np.ascontiguousarray(uids).view(np.dtype((np.void, 16)))
