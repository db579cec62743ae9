"""Reading webdataset tars (pool shards, eval sets): one reader for every stage.

Plain tars (ustar, GNU and pax headers: what webdataset, img2dataset, Python's tarfile and GNU tar write)
are read from a memory map: an intact one with its headers parsed in numpy, anything irregular header by
header. A damaged tar does not lose everything after the damage: the reader skips to the next valid
header (ustar magic, a matching checksum, a size that fits the file), leaves out the members the damage
touched and records what it skipped in a ``TarDamage``. Compressed tars go through the standard library's
tarfile, which cannot resynchronise: they are read up to the damage.

    samples = TarSamples(path)    # read past damage; samples.damage says what was lost, stderr gets one line
    for key, sample in samples: ...
    for key, sample in iter_tar_samples(path): ...   # the same samples, then PoolError if the tar is damaged
"""

from __future__ import annotations

import json
import lzma
import mmap
import re
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PoolError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")

_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd
_MAGIC = b"ustar"  # at byte 257 of every ustar, GNU and pax header: what resynchronising looks for
_REGULAR = (b"0", b"\0", b"7")  # what tarfile's isfile() accepts (sparse files aside)
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos: no data blocks follow
_KNOWN = (*_REGULAR, *_NO_DATA, b"x", b"X", b"g", b"L", b"K", b"S")
_ZEROS = "zeros"


@dataclass
class TarDamage:
    """What a damaged tar lost. ``regions``: (byte offset, bytes skipped, what was found there), offset -1
    when unknown (compressed tars); ``lost_members``: members whose header or data the damage touched (at
    least: a damaged region may have held more)."""

    path: Path
    regions: list[tuple[int, int, str]] = field(default_factory=list)
    lost_members: int = 0
    read_on: bool = True  # False: nothing after the damage could be read (compressed tars)

    def __bool__(self) -> bool:
        return bool(self.regions)

    def add(self, offset: int, skipped: int, what: str, lost: int) -> None:
        self.regions.append((offset, skipped, what))
        self.lost_members += lost

    @property
    def skipped_bytes(self) -> int:
        return sum(size for _, size, _ in self.regions)

    def describe(self) -> str:
        offset, _, what = self.regions[0]
        where = f"{what} at byte {offset:,}" if offset >= 0 else what
        if len(self.regions) > 1:
            where += f" (and {len(self.regions) - 1} more damaged place{'s' if len(self.regions) > 2 else ''})"
        if not self.read_on:
            return f"{self.path}: damaged tar: {where}; the samples after it were skipped"
        return (f"{self.path}: damaged tar: {where}; skipped {self.skipped_bytes:,} bytes, {self.lost_members} "
                f"member{'' if self.lost_members == 1 else 's'} lost, read on from the next valid header")

    def warn(self) -> None:
        """One line on stderr: which tar, where, how much was lost."""
        print(f"siftbench: warning: {self.describe()}", file=sys.stderr, flush=True)

    def summary(self) -> dict[str, Any]:
        """For stats files: what was skipped, where."""
        return {"skipped_bytes": self.skipped_bytes, "lost_members": self.lost_members,
                "regions": [{"offset": o, "bytes": n, "found": w} for o, n, w in self.regions]}


class TarSamples:
    """The samples of one webdataset tar, (key, {extension: bytes}), read past any damage.

    After the iteration ``damage`` says what was skipped (empty for an intact tar), and a damaged tar has
    printed one warning line on stderr: which tar, where, how much was lost (``warn=False``: the caller
    reports it).
    """

    def __init__(self, path: str | Path, warn: bool = True):
        self.path = Path(path)
        self.warn = warn
        self.damage = TarDamage(self.path)

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        self.damage = TarDamage(self.path)
        yield from _samples(self.path, self.damage)
        if self.damage and self.warn:
            self.damage.warn()


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample of a webdataset tar, read past any damage.

    Raises PoolError naming the tar and the damage after the last sample when the tar is damaged, so a
    caller that catches it can count a damaged tar. ``TarSamples`` reports damage without raising.
    """
    samples = TarSamples(path, warn=False)
    yield from samples
    if samples.damage:
        raise PoolError(samples.damage.describe())


def tar_members(path: str | Path, damage: TarDamage) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file of a plain tar, read past damage (recorded in
    ``damage``); None for a compressed tar (or GNU sparse members), whose data are not byte ranges of the file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            damage.add(0, 0, "an empty file", 0)
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _members(mm, size, damage)


def _samples(path: Path, damage: TarDamage) -> Iterator[tuple[str, dict[str, bytes]]]:
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            damage.add(0, 0, "an empty file", 0)
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            members = _members(mm, size, damage)
            if members is not None:
                yield from _by_key((name, mm[offset:offset + length]) for name, offset, length in members)
                return
    damage.regions.clear()
    damage.lost_members = 0
    yield from _tarfile_samples(path, damage)


def _by_key(files: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key (the file name up to its first dot) make one sample."""
    current_key: str | None = None
    current: dict[str, bytes] = {}
    for name, payload in files:
        key, _, ext = name.rsplit("/", 1)[-1].partition(".")
        if key != current_key and current:
            yield current_key, current  # type: ignore[misc]
            current = {}
        current_key = key
        current[ext.lower()] = payload
    if current:
        yield current_key, current  # type: ignore[misc]


def _members(mm: Any, size: int, damage: TarDamage) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file; None when tarfile must read it (compressed)."""
    if mm[:6].startswith(_COMPRESSED):
        return None
    if size % 512 == 0:
        found = _standard_tar_members(mm, size)
        if found is not None and found is not _NOT_STANDARD:
            return found  # type: ignore[return-value]
    return _walk(mm, size, damage)


_NOT_STANDARD = object()


def _octal(fields: np.ndarray, digits: int) -> np.ndarray:
    """Numeric tar fields written the standard way (zero-padded octal, then NUL or space); -1 elsewhere."""
    values = fields[:, :digits].astype(np.int64) - 48
    ok = ((values >= 0) & (values <= 7)).all(axis=1) & np.isin(fields[:, digits], (0, 32))
    return np.where(ok, values @ (8 ** np.arange(digits - 1, -1, -1, dtype=np.int64)), -1)


def _standard_tar_members(mm: Any, size: int) -> Any:
    """``_members`` for tars whose fields are in the standard form (what Python's tarfile and GNU tar
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
    if _resync(mm, 512 * (starts[-1] + 1), size) is not None:  # a header inside the last member's data
        return None
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


@dataclass
class _Header:
    offset: int
    kind: bytes
    name: str
    size: int

    @property
    def data(self) -> int:
        return self.offset + 512

    @property
    def end(self) -> int:
        """Where the next header starts."""
        return self.data + (0 if self.kind in _NO_DATA else -(-self.size // 512) * 512)


def _walk(mm: Any, size: int, damage: TarDamage) -> list[tuple[str, int, int]] | None:
    """``_members`` header by header, for any plain tar: ustar prefixes, space-padded or base-256 numbers,
    pax and GNU long names, and damage, which is skipped up to the next valid header (``_resync``)."""
    members: list[tuple[str, int, int]] = []
    pos = 0
    last: _Header | None = None  # the last header read: a truncated member shows only at the next header
    last_index: int | None = None  # its place in members
    long_name: str | None = None  # from a GNU 'L' or pax header, for the next member
    pax_size: int | None = None
    while True:
        header = _header(mm, pos, size)
        if isinstance(header, _Header):
            if header.kind == b"S":
                return None  # GNU sparse files: tarfile's job
            meta = header.kind in (b"x", b"X", b"g", b"L", b"K")
            if not meta:  # a pax or GNU long-name header before it describes this member
                header.name, long_name = long_name or header.name, None
                header.size, pax_size = header.size if pax_size is None else pax_size, None
            if header.data + (0 if header.kind in _NO_DATA else header.size) <= size:
                if header.kind in (b"x", b"X"):
                    records = _pax_records(mm[header.data:header.data + header.size])
                    long_name = records.get("path", long_name)
                    pax_size = int(records["size"]) if records.get("size", "").isdigit() else pax_size
                elif header.kind == b"L":
                    long_name = _text(mm[header.data:header.data + header.size].split(b"\0", 1)[0])
                is_file = header.kind in _REGULAR and not (header.kind == b"\0" and header.name.endswith("/"))
                last, last_index = header, len(members) if is_file else None
                if is_file:
                    members.append((header.name, header.data, header.size))
                pos = header.end
                continue
            # Its data run past the end of the file: cut short (a later header inside them is read on from).
            resume = _resync(mm, header.data, size)
            damage.add(pos, (size if resume is None else resume) - pos, f"a member cut short ({header.name!r})", 1)
        else:
            first = _first_nonzero(mm, pos, size) if header == _ZEROS else pos
            # A valid header inside the last member's data means that member was cut short and what it
            # claimed as its data holds the members after it (checked at the end of the archive too).
            resume = _resync(mm, last.data if last is not None else pos, size)
            if last is not None and resume is not None and resume < pos:
                if last_index is not None:
                    members.pop(last_index)
                damage.add(last.offset, resume - last.offset, f"a member cut short ({last.name!r})", 1)
            elif first is None:
                break  # the end-of-archive marker (or the end of the file), and only zeros after it
            elif header == _ZEROS and resume is not None:
                damage.add(pos, resume - pos, "zeroed blocks", 0)  # members follow: the zeros stood in for some
            elif header == _ZEROS:
                damage.add(first, size - first, "data after the end-of-archive marker", 0)
            else:
                damage.add(pos, (size if resume is None else resume) - pos, header, 1)
        if resume is None:
            break
        pos, last, last_index, long_name, pax_size = resume, None, None, None, None
    return members


def _header(mm: Any, pos: int, size: int) -> _Header | str:
    """The header at ``pos``, or why there is none: ``_ZEROS``, or the problem in words."""
    block = mm[pos:pos + 512]
    if not block.strip(b"\0"):
        return _ZEROS
    if len(block) < 512:
        return "a header cut short by the end of the file"
    try:
        stored, length = _number(block[148:156]), _number(block[124:136])
    except ValueError:
        return "a header with unreadable numbers"
    if not _checksum_matches(block, stored):
        return "a header with a bad checksum"
    if length < 0:
        return "a header with a negative size"
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _Header(pos, block[156:157], _text(name), length)


def _resync(mm: Any, start: int, size: int) -> int | None:
    """Offset of the first valid header at or after ``start``: ustar magic, a matching checksum, a known
    type, and data that fit in the file. None when there is none (v7 tars, without magic, are not searched)."""
    at = start + 257
    while (at := mm.find(_MAGIC, at)) >= 0:
        candidate = at - 257
        header = _header(mm, candidate, size) if candidate >= 0 else None
        if (isinstance(header, _Header) and header.kind in _KNOWN and header.name
                and header.data + (0 if header.kind in _NO_DATA else header.size) <= size):
            return candidate
        at += 1
    return None


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal up to the first NUL, or GNU base-256."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[0] == 0o377 else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _checksum_matches(block: bytes, stored: int) -> bool:
    """The header's byte sum, with its checksum field counted as spaces, as unsigned bytes or (as some old
    tars wrote it) signed ones."""
    if stored == 256 + sum(block[:148]) + sum(block[156:]):
        return True
    return stored == 256 + sum(struct.unpack_from("148b", block)) + sum(struct.unpack_from("356b", block, 156))


def _first_nonzero(mm: Any, pos: int, size: int) -> int | None:
    while pos < size:
        chunk = mm[pos:pos + (1 << 20)]
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return pos + len(chunk) - len(stripped)
        pos += len(chunk)
    return None


_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``length keyword=value\\n`` records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while (match := _PAX_RECORD.match(data, pos)) and int(match.group(1)) > 0:
        length = int(match.group(1))
        records[_text(match.group(2))] = _text(data[match.end():match.start(1) + length - 1])
        pos += length
    return records


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _checksums_match(raw: np.ndarray, offsets: Sequence[int], stored: Any) -> bool:
    """Every tar header's checksum in one vectorised pass (summing 512 bytes per member in Python cost more
    than the rest of the parse): the header's byte sum with its checksum field counted as spaces."""
    at = np.asarray(offsets, dtype=np.int64)[:, None]
    sums = raw[at + np.arange(512)].sum(axis=1, dtype=np.int64) - raw[at + np.arange(148, 156)].sum(axis=1, dtype=np.int64)
    return bool(np.array_equal(sums + 256, np.asarray(stored, dtype=np.int64)))


def _tarfile_samples(path: Path, damage: TarDamage) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples through the standard library: compressed tars (and GNU sparse members). tarfile cannot
    resynchronise, so the samples after damage are lost."""
    def files(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                yield member.name, handle.read() if handle else b""

    try:
        with tarfile.open(path, "r:*") as tar:
            yield from _by_key(files(tar))
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        damage.add(-1, 0, f"unreadable ({e})", 0)
        damage.read_on = False
        return
    garbage_at = data_after_end(path, end)
    if garbage_at is not None:
        damage.add(garbage_at, path.stat().st_size - garbage_at, "data after the end-of-archive marker", 0)
        damage.read_on = False


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
