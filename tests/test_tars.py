"""One tar reader for every stage: on intact tars it gives exactly what tarfile gives; on damaged ones it
reads on from the next valid header, and says what it skipped."""

import gzip
import io
import mmap
import tarfile
from pathlib import Path

import pytest

from siftbench.benchmark.core.errors import PoolError
from siftbench.benchmark.core.tars import (
    _NOT_STANDARD,
    TarDamage,
    TarSamples,
    _standard_tar_members,
    _walk,
    iter_tar_samples,
    tar_members,
)

SAMPLE_BYTES = 3072  # webdataset_tar: three members of one header block and one data block each


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
        members += [(f"{key}.png", bytes([i + 1]) * 300), (f"{key}.txt", b"a red circle"),
                    (f"{key}.json", b'{"uid": "%032x"}' % i)]
    return write_tar(path, members)


def tarfile_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """The reference: what the standard library reads, grouped into webdataset samples."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext.lower()] = tar.extractfile(member).read()
    return samples


def read(path: Path) -> tuple[list[tuple[str, dict[str, bytes]]], TarDamage]:
    samples = TarSamples(path, warn=False)
    return list(samples), samples.damage


def walked(path: Path) -> list[tuple[str, int, int]] | None:
    """The header-by-header parse alone (the path every irregular tar takes)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _walk(mm, len(mm), TarDamage(path))


def keys(samples) -> list[str]:
    return [key for key, _ in samples]


def test_intact_tars_read_exactly_as_tarfile_reads_them(tmp_path: Path):
    plain = webdataset_tar(tmp_path / "shard.tar")
    long_pax = write_tar(tmp_path / "pax.tar", [("k" * 120 + ".txt", b"hello"), ("k" * 120 + ".json", b'{"uid": "ab"}')],
                         fmt=tarfile.PAX_FORMAT)
    long_gnu = write_tar(tmp_path / "gnu-long.tar", [("g" * 130 + ".txt", b"hi"), ("short.txt", b"x")],
                         fmt=tarfile.GNU_FORMAT)
    nested = write_tar(tmp_path / "dirs.tar", [("a/b/k1.png", b"\x89PNG"), ("a/b/k1.txt", b"caption")])
    with tarfile.open(nested, "a") as tar:  # a directory and a symlink: not samples, as for tarfile
        info = tarfile.TarInfo("a/dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        link = tarfile.TarInfo("a/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a/b/k1.txt"
        tar.addfile(link)
    for path in (plain, long_pax, long_gnu, nested):
        samples, damage = read(path)
        assert samples == tarfile_samples(path) and not damage, path.name
        members = walked(path)  # the header-by-header parse agrees with the vectorised one
        assert members == tar_members(path, TarDamage(path)), path.name
        assert len(members) == sum(len(s) for _, s in samples)
    assert len(read(plain)[0]) == 5
    assert read(long_pax)[0] == [("k" * 120, {"txt": b"hello", "json": b'{"uid": "ab"}'})]
    assert keys(read(long_gnu)[0]) == ["g" * 130, "short"]


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
        samples, damage = read(path)
        assert samples == tarfile_samples(path) and not damage, path.name


def test_a_garbled_header_in_the_middle_loses_that_member_only(tmp_path: Path, capsys):
    tar = webdataset_tar(tmp_path / "shard.tar")
    intact = tarfile_samples(tar)
    raw = bytearray(tar.read_bytes())
    raw[2 * SAMPLE_BYTES : 2 * SAMPLE_BYTES + 100] = b"\xff" * 100  # sample 2's image header
    tar.write_bytes(bytes(raw))
    assert len(tarfile_samples(tar)) == 2  # tarfile takes the garbage for the end of the archive

    samples, damage = read(tar)
    want = list(intact)
    want[2] = (want[2][0], {k: v for k, v in want[2][1].items() if k != "png"})  # its caption and uid survive
    assert samples == want
    assert damage.lost_members == 1 and damage.skipped_bytes == 1024  # the header and its data block
    assert damage.regions == [(2 * SAMPLE_BYTES, 1024, "a header with a bad checksum")]

    # iter_tar_samples gives the same samples, then says the tar is damaged; TarSamples warns in one line.
    got = []
    with pytest.raises(PoolError, match=r"shard\.tar: damaged tar: a header with a bad checksum at byte 6,144; "
                                        r"skipped 1,024 bytes, 1 member lost"):
        for sample in iter_tar_samples(tar):
            got.append(sample)
    assert got == want
    capsys.readouterr()
    assert len(list(TarSamples(tar))) == 5
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("siftbench: warning: ") and "shard.tar" in lines[0]
    assert "byte 6,144" in lines[0] and "skipped 1,024 bytes" in lines[0]


def test_a_member_cut_short_in_the_middle_loses_that_member_only(tmp_path: Path):
    tar = webdataset_tar(tmp_path / "shard.tar")
    intact = tarfile_samples(tar)
    raw = tar.read_bytes()
    image_data = 2 * SAMPLE_BYTES + 512
    # 100 bytes of sample 2's image are gone (a lost write): every later header is off the 512-byte grid.
    (tmp_path / "cut.tar").write_bytes(raw[:image_data + 50] + raw[image_data + 150:])
    samples, damage = read(tmp_path / "cut.tar")
    assert keys(samples) == keys(intact)
    assert samples[2][1] == {k: v for k, v in intact[2][1].items() if k != "png"}
    assert [s for i, s in enumerate(samples) if i != 2] == [s for i, s in enumerate(intact) if i != 2]
    assert damage.lost_members == 1 and damage.regions[0][0] == 2 * SAMPLE_BYTES
    assert "a member cut short ('000000002.png')" in damage.describe()

    # A header that claims more data than the member has: the next header turns up inside the claimed data.
    grown = bytearray(raw)
    header = 2 * SAMPLE_BYTES
    grown[header + 124 : header + 136] = b"%011o\0" % 5000
    grown[header + 148 : header + 156] = b" " * 8
    grown[header + 148 : header + 156] = b"%06o\0 " % sum(grown[header : header + 512])
    (tmp_path / "grown.tar").write_bytes(bytes(grown))
    samples, damage = read(tmp_path / "grown.tar")
    assert samples[2][1] == {k: v for k, v in intact[2][1].items() if k != "png"} and len(samples) == 5
    assert damage.lost_members == 1 and damage.regions == [(header, 1024, "a member cut short ('000000002.png')")]


def test_zeroed_blocks_garbage_after_the_end_and_a_cut_at_the_end(tmp_path: Path):
    tar = webdataset_tar(tmp_path / "shard.tar")
    intact = tarfile_samples(tar)
    raw = tar.read_bytes()
    zeroed = raw[: 2 * SAMPLE_BYTES] + bytes(SAMPLE_BYTES) + raw[3 * SAMPLE_BYTES :]  # sample 2 wiped
    (tmp_path / "zeroed.tar").write_bytes(zeroed)
    samples, damage = read(tmp_path / "zeroed.tar")
    assert samples == intact[:2] + intact[3:]
    assert damage.regions == [(2 * SAMPLE_BYTES, SAMPLE_BYTES, "zeroed blocks")]

    (tmp_path / "tail.tar").write_bytes(raw + b"trailing garbage")
    samples, damage = read(tmp_path / "tail.tar")
    assert samples == intact and damage.lost_members == 0 and damage.skipped_bytes == len(b"trailing garbage")

    (tmp_path / "cut.tar").write_bytes(raw[: 3 * SAMPLE_BYTES + 512 + 100])  # inside sample 3's image data
    samples, damage = read(tmp_path / "cut.tar")
    assert samples == intact[:3]
    assert damage.regions == [(3 * SAMPLE_BYTES, 612, "a member cut short ('000000003.png')")]
    (tmp_path / "cut-header.tar").write_bytes(raw[: 4 * SAMPLE_BYTES - 700])  # inside sample 3's uid header
    samples, damage = read(tmp_path / "cut-header.tar")
    assert samples == [*intact[:3], (intact[3][0], {k: intact[3][1][k] for k in ("png", "txt")})]
    assert damage.regions == [(3 * SAMPLE_BYTES + 2048, 324, "a header cut short by the end of the file")]
    with pytest.raises(PoolError, match="cut short"):
        list(iter_tar_samples(tmp_path / "cut.tar"))


def test_files_that_are_no_tar_at_all(tmp_path: Path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(PoolError, match=r"empty\.tar: damaged tar: an empty file"):
        list(iter_tar_samples(empty))
    page = tmp_path / "page.tar"
    page.write_bytes(b"<html><body>503 Service Unavailable</body></html>" * 40)
    samples, damage = read(page)
    assert samples == [] and damage.skipped_bytes == page.stat().st_size and damage.lost_members == 1


def test_compressed_tars_go_through_tarfile_and_stop_at_damage(tmp_path: Path):
    tar = webdataset_tar(tmp_path / "shard.tar")
    packed = tmp_path / "shard.tar.gz"
    packed.write_bytes(gzip.compress(tar.read_bytes()))
    assert read(packed)[0] == tarfile_samples(tar) and not read(packed)[1]
    assert tar_members(packed, TarDamage(packed)) is None  # no byte ranges of the file
    packed.write_bytes(gzip.compress(tar.read_bytes())[:-300])
    samples, damage = read(packed)
    assert damage and not damage.read_on and "the samples after it were skipped" in damage.describe()
    assert samples == tarfile_samples(tar)[: len(samples)]


def test_random_damage_never_breaks_the_reader(tmp_path: Path):
    """Bytes flipped, cut out or inserted anywhere: the reader finishes without an exception and every
    member it yields is one of the tar's own (same key and extension)."""
    import random

    tar = webdataset_tar(tmp_path / "shard.tar", samples=8)
    raw = tar.read_bytes()
    names = {(key, ext) for key, sample in tarfile_samples(tar) for ext in sample}
    rng = random.Random(0)
    damaged = tmp_path / "damaged.tar"
    for _ in range(200):
        at = rng.randrange(len(raw))
        span = rng.randrange(1, 2000)
        kind = rng.choice(["flip", "cut", "insert"])
        if kind == "flip":
            data = raw[:at] + bytes(rng.randrange(256) for _ in range(min(span, 64))) + raw[at + min(span, 64):]
        elif kind == "cut":
            data = raw[:at] + raw[at + span:]
        else:
            data = raw[:at] + bytes(rng.randrange(256) for _ in range(span)) + raw[at:]
        damaged.write_bytes(data)
        samples, damage = read(damaged)
        assert {(key, ext) for key, sample in samples for ext in sample} <= names
        assert len(samples) <= 8
        if not damage:  # nothing seen amiss: then tarfile reads the same (a cut that takes whole members away
            assert samples == tarfile_samples(damaged)  # leaves a tar no reader can tell from an intact one)
