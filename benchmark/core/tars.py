"""Reading webdataset tars (pool shards, eval sets): one reader for every stage.

Plain ustar/GNU tars, which webdataset, img2dataset and the world write, are read from a memory map with
their headers parsed in numpy; anything else (compressed, pax or long-name headers, bad checksums,
truncation, data after the end) goes through the standard library's tarfile, errors included.
"""

from __future__ import annotations

import json
import mmap
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from string import hexdigits
from typing import Any

import numpy as np

from .errors import PoolError

_HEX = frozenset(hexdigits)


_COMPRESSED = (b"\x1f\x8b", b"BZ", b"\xfd7")


IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample of a webdataset tar.

    Raises PoolError naming the tar when it is truncated or corrupt; samples read before the damage are
    still yielded, so a caller can count what it lost.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            yield from _tarfile_samples(path)
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            members = _tar_members(mm, size)
            if members is None:
                mm.close()
                yield from _tarfile_samples(path)
                return
            current_key: str | None = None
            current: dict[str, bytes] = {}
            for name, offset, length in members:
                key, _, ext = name.rsplit("/", 1)[-1].partition(".")
                if key != current_key and current:
                    yield current_key, current  # type: ignore[misc]
                    current = {}
                current_key = key
                current[ext.lower()] = mm[offset:offset + length]
            if current:
                yield current_key, current  # type: ignore[misc]


def _tar_members(mm: Any, size: int) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file, or None when the fast path must not guess."""
    if mm[:2] in _COMPRESSED or mm[:3] == b"\xfd7z":
        return None
    if size % 512 == 0:
        found = _standard_tar_members(mm, size)
        if found is not _NOT_STANDARD:
            return found  # type: ignore[return-value]
    return _tar_members_header_by_header(mm, size)


_NOT_STANDARD = object()


def _octal(fields: np.ndarray, digits: int) -> np.ndarray:
    """Numeric tar fields written the standard way (zero-padded octal, then NUL or space); -1 elsewhere."""
    values = fields[:, :digits].astype(np.int64) - 48
    ok = ((values >= 0) & (values <= 7)).all(axis=1) & np.isin(fields[:, digits], (0, 32))
    return np.where(ok, values @ (8 ** np.arange(digits - 1, -1, -1, dtype=np.int64)), -1)


def _standard_tar_members(mm: Any, size: int) -> Any:
    """``_tar_members`` for tars whose fields are in the standard form (what Python's tarfile and GNU tar
    write), with the per-member work in numpy: only the walk from header to header stays in Python.
    Returns _NOT_STANDARD for anything else (space-padded numbers, ustar prefixes), which the
    header-by-header parse then reads."""
    blocks = np.frombuffer(mm, dtype=np.uint8, count=size).reshape(-1, 512)
    lengths = _octal(blocks[:, 124:136], 11).tolist()  # every block: data blocks just give garbage
    starts: list[int] = []
    block, count = 0, len(blocks)
    while block < count:
        length = lengths[block]
        if length < 0:
            if not blocks[block].any():  # end of archive: the rest must be zeros too
                if blocks[block:].any():
                    return None
                break
            return _NOT_STANDARD
        starts.append(block)
        block += 1 + -(-length // 512)
    if block > count:  # the last member runs past the end: truncated
        return None
    if not starts:
        return []
    headers = blocks[starts]
    stored = _octal(headers[:, 148:156], 6)
    if (stored < 0).any():
        return _NOT_STANDARD
    if not _checksums_match(blocks.reshape(-1), [512 * b for b in starts], stored):
        return None
    kinds = headers[:, 156]
    if not np.isin(kinds, (0, 48, 53)).all():  # pax, long names, links: tarfile's job
        return None
    ustar = (headers[:, 257:263] == np.frombuffer(b"ustar\x00", np.uint8)).all(axis=1)
    if (ustar & (headers[:, 345] != 0)).any():  # a prefix extends some name
        return _NOT_STANDARD
    nul = headers[:, :100] == 0
    name_lengths = np.where(nul.any(axis=1), nul.argmax(axis=1), 100).tolist()
    return [
        (mm[512 * b : 512 * b + n].decode("utf-8", "surrogateescape"), 512 * (b + 1), lengths[b])
        for b, n, kind in zip(starts, name_lengths, kinds.tolist(), strict=True)
        if kind != 53  # directories
    ]


def _tar_members_header_by_header(mm: Any, size: int) -> list[tuple[str, int, int]] | None:
    members = []
    headers: list[int] = []
    stored_sums: list[int] = []
    pos = 0
    while pos + 512 <= size:
        header = mm[pos:pos + 512]
        if header.count(0) == 512:  # end of archive: the rest must be zeros too
            if mm[pos:].strip(b"\0"):
                return None
            break
        try:
            stored = int(header[148:156].strip(b"\0 ") or b"-1", 8)
            length = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:  # base-256 sizes, garbage: tarfile knows what to do
            return None
        headers.append(pos)
        stored_sums.append(stored)
        kind = header[156:157]
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        data = pos + 512
        if data + length > size:  # truncated
            return None
        if kind in (b"0", b"\0"):
            members.append((name.decode("utf-8", "surrogateescape"), data, length))
        elif kind != b"5":  # directories are skipped; pax, long names, links: leave them to tarfile
            return None
        pos = data + -(-length // 512) * 512
    else:
        if pos != size:
            return None
    if headers and not _checksums_match(np.frombuffer(mm, dtype=np.uint8, count=size), headers, stored_sums):
        return None
    return members


def _checksums_match(raw: np.ndarray, offsets: Sequence[int], stored: Any) -> bool:
    """Every tar header's checksum in one vectorised pass (summing 512 bytes per member in Python cost more
    than the rest of the parse): the header's byte sum with its checksum field counted as spaces."""
    at = np.asarray(offsets, dtype=np.int64)[:, None]
    sums = raw[at + np.arange(512)].sum(axis=1, dtype=np.int64) - raw[at + np.arange(148, 156)].sum(axis=1, dtype=np.int64)
    return bool(np.array_equal(sums + 256, np.asarray(stored, dtype=np.int64)))


def _tarfile_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``iter_tar_samples`` through the standard library: any tar tarfile reads, compressed ones too."""
    current_key: str | None = None
    current: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                if key != current_key and current:
                    yield current_key, current  # type: ignore[misc]
                    current = {}
                current_key = key
                handle = tar.extractfile(member)
                current[ext.lower()] = handle.read() if handle else b""
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError) as e:
        if current:
            yield current_key, current  # type: ignore[misc]
        raise PoolError(f"{path}: damaged tar ({e}); samples after this point were skipped") from e
    if current:
        yield current_key, current  # type: ignore[misc]
    garbage_at = data_after_end(path, end)
    if garbage_at is not None:
        raise PoolError(f"{path}: damaged tar (unreadable header at byte {garbage_at}); samples after it were skipped")


def data_after_end(path: Path, end: int) -> int | None:
    """Offset of non-zero bytes after the archive's end, or None.

    tarfile treats a garbage header in the middle of an archive as the end of the archive and stops
    without an error, so a damaged shard would silently lose its tail. Only plain tars can be checked.
    """
    with open(path, "rb") as f:
        if f.read(2) in (b"\x1f\x8b", b"BZ", b"\xfd7"):  # gzip, bzip2, xz: offsets are not file offsets
            return None
        f.seek(end)
        while block := f.read(1 << 16):
            stripped = block.lstrip(b"\0")
            if stripped:
                return f.tell() - len(stripped)
    return None


def sample_uid(sample: dict[str, bytes]) -> str | None:
    """The uid stored in a webdataset sample's .json (DataComp's download saves it there)."""
    raw = sample.get("json")
    if raw is None:
        return sample.get("uid", b"").decode() or None
    try:
        uid = json.loads(raw).get("uid")
    except (ValueError, AttributeError):
        return None
    return str(uid) if uid is not None else None


def sample_image(sample: dict[str, bytes]) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    return None
