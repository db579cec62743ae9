"""One tar reader for every stage: the numpy header parse gives exactly what tarfile gives, and everything
it does not handle goes to tarfile, errors included."""

import io
import mmap
import tarfile
from pathlib import Path

import pytest

from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.core.tars import (
    _NOT_STANDARD,
    _standard_tar_members,
    _tarfile_samples,
    iter_tar_samples,
)


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as out:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    return path


def webdataset_tar(path: Path, samples: int = 5) -> Path:
    """Each sample is three members of one 512-byte block each: 3072 bytes per sample."""
    members = []
    for i in range(samples):
        key = f"{i:09d}"
        members += [(f"{key}.png", bytes([i]) * 300), (f"{key}.txt", b"a red circle"),
                    (f"{key}.json", b'{"uid": "%032x"}' % i)]
    return write_tar(path, members)


def test_fast_reader_matches_tarfile_and_falls_back_on_anything_else(tmp_path: Path):
    tar = webdataset_tar(tmp_path / "shard.tar")
    assert list(iter_tar_samples(tar)) == list(_tarfile_samples(tar))
    assert len(list(iter_tar_samples(tar))) == 5
    # A pax header (long name) is tarfile's job; the samples come out the same.
    long = write_tar(tmp_path / "long.tar", [("k" * 120 + ".txt", b"hello"), ("k" * 120 + ".json", b'{"uid": "ab"}')],
                     fmt=tarfile.PAX_FORMAT)
    assert list(iter_tar_samples(long)) == list(_tarfile_samples(long)) == [
        ("k" * 120, {"txt": b"hello", "json": b'{"uid": "ab"}'})]
    raw = bytearray(tar.read_bytes())
    raw[2 * 3072 : 2 * 3072 + 100] = b"\xff" * 100  # garbled header: same samples, then the same error
    tar.write_bytes(bytes(raw))
    fast, slow = [], []
    for reader, got in ((iter_tar_samples, fast), (_tarfile_samples, slow)):
        with pytest.raises(PoolError, match="unreadable header"):
            for sample in reader(tar):
                got.append(sample)
    assert fast == slow and len(fast) == 2
    tar.write_bytes(bytes(raw[: 4 * 3072 - 700]))  # truncated inside a member
    with pytest.raises(PoolError):
        list(iter_tar_samples(tar))


def test_gnu_ustar_prefix_and_space_padded_numbers(tmp_path: Path):
    def standard(path: Path):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _standard_tar_members(mm, len(mm))

    payloads = [(name, f"payload {i}".encode()) for i, name in enumerate(["a/k1.txt", "a/k1.json", "a/k2.txt"])]
    gnu = write_tar(tmp_path / "gnu.tar", payloads, fmt=tarfile.GNU_FORMAT)
    assert standard(gnu) not in (None, _NOT_STANDARD)  # the vectorised path reads it
    prefixed = write_tar(tmp_path / "prefix.tar", [("d" * 90 + "/" + "e" * 60 + "/k1.txt", b"x")])
    assert standard(prefixed) is _NOT_STANDARD  # a ustar prefix: read header by header
    # Space-padded numbers, as some writers emit them: not the standard form, still read.
    raw = bytearray(gnu.read_bytes())
    raw[124:136] = b"%11o " % 9  # size 9, space-padded instead of zero-padded
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % (sum(raw[:512]))
    spaced = tmp_path / "spaced.tar"
    spaced.write_bytes(bytes(raw))
    assert standard(spaced) is _NOT_STANDARD
    for path in (gnu, prefixed, spaced):
        assert list(iter_tar_samples(path)) == list(_tarfile_samples(path)), path.name


def test_an_empty_file_is_a_damaged_tar(tmp_path: Path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(PoolError, match=r"empty\.tar"):
        list(iter_tar_samples(empty))
