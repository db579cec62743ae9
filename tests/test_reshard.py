"""reshard: repeats honoured and spread, missing and damaged input counted, deterministic, resumable."""

from __future__ import annotations

import io
import itertools
import json
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.errors import PoolError, StageError, SubsetError
from siftbench.benchmark.core.tars import iter_tar_samples, sample_uid
from siftbench.benchmark.core.uids import hex_to_uids, sort_uids, uids_to_hex, write_subset
from siftbench.benchmark.stages import reshard as reshard_mod
from siftbench.benchmark.stages.reshard import reshard


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("pool")
    return root, make_tiny_pool(root, n_shards=3, per_shard=40, seed=0)


def subset_with_repeats(uids: list[str], missing: tuple[str, ...] = ()) -> np.ndarray:
    """The first 80 pool uids once, ten of them 2-6 times in all, plus uids the pool lacks."""
    base = uids[:80]
    extra = [u for i, u in enumerate(uids[:10]) for _ in range(1 + i % 5)]
    return sort_uids(hex_to_uids(base + extra + list(missing)))


def stream(out: Path) -> list[tuple[str, str, str]]:
    """(shard, key, uid) for every sample of the output, in shard then tar order."""
    rows = []
    for tar in sorted(out.glob("*.tar")):
        for key, sample in iter_tar_samples(tar):
            assert {"txt", "json"} <= set(sample) and ("png" in sample)
            rows.append((tar.name, key, sample_uid(sample)))
    return rows


def test_repeats_are_honoured_and_missing_uids_counted(pool, tmp_path):
    root, uids = pool
    missing = ("ab" * 16, "cd" * 16, "cd" * 16)
    subset = subset_with_repeats(uids, missing)
    stats = reshard(root, subset, tmp_path / "out", seed=0, samples_per_shard=25, progress=False)

    rows = stream(tmp_path / "out")
    wanted = Counter(uids_to_hex(subset))
    for m in missing:
        del wanted[m]
    assert Counter(uid for _, _, uid in rows) == wanted
    assert len({key for _, key, _ in rows}) == len(rows), "keys must stay unique when uids repeat"
    assert stats["missing_from_pool"] == 2 and stats["missing_copies"] == 3
    assert stats["num_samples"] == len(rows) == sum(wanted.values())
    assert stats["num_unique"] == 80 and stats["pool_samples_scanned"] == 120
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == len(rows)
    assert manifest["shards"] == sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert manifest["pattern"] == f"{{00000..{len(manifest['shards']) - 1:05d}}}.tar"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["num_samples"] == len(rows)


def test_copies_of_a_uid_are_spread_over_the_stream_and_shards(pool, tmp_path):
    root, uids = pool
    subset = subset_with_repeats(uids)
    stats = reshard(root, subset, tmp_path / "out", seed=3, samples_per_shard=10, progress=False)
    rows = stream(tmp_path / "out")
    positions: dict[str, list[int]] = {}
    shards: dict[str, list[str]] = {}
    for i, (shard, _, uid) in enumerate(rows):
        positions.setdefault(uid, []).append(i)
        shards.setdefault(uid, []).append(shard)
    k_max = max(len(p) for p in positions.values())
    gap = min(b - a for p in positions.values() for a, b in itertools.pairwise(p))
    # Evenly spaced copies sit about N/k apart; half of that leaves room for the other uids' jitter.
    assert gap >= len(rows) / (2 * k_max), (gap, len(rows), k_max)
    assert stats["min_copy_gap"] == gap
    assert all(len(set(s)) == len(s) for s in shards.values()), "k well below #shards: copies in distinct shards"
    assert stats["max_copies_in_one_shard"] == 1


def test_same_inputs_and_seed_give_byte_identical_shards(pool, tmp_path):
    root, uids = pool
    subset = subset_with_repeats(uids)
    runs = {}
    for name, seed, workers in (("a", 7, 1), ("b", 7, 2), ("c", 8, 1)):
        reshard(root, subset, tmp_path / name, seed=seed, samples_per_shard=30, workers=workers, progress=False)
        runs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).glob("*.tar")}
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"], "the seed decides the order"
    reshard(root, subset, tmp_path / "a", seed=7, samples_per_shard=30, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.tar")} == runs["a"]


def test_rerun_after_a_crash_finishes_only_the_missing_work(pool, tmp_path, monkeypatch):
    root, uids = pool
    subset = subset_with_repeats(uids)
    out = tmp_path / "out"
    reshard(root, subset, tmp_path / "reference", seed=1, samples_per_shard=30, progress=False)
    reshard(root, subset, out, seed=1, samples_per_shard=30, progress=False)
    # What a kill -9 leaves: a shard never finished (no marker, no tar), a temp file of the writer,
    # and one pool tar not yet indexed.
    (out / "00001.tar").unlink()
    (out / ".reshard" / "done" / "00001.json").unlink()
    (out / ".00002.tar.tmp-99999").write_bytes(b"partial")
    (out / ".reshard" / "index" / "00000000.npz").unlink()

    calls = Counter()
    for name in ("_index_tar", "_write_shard"):
        original = getattr(reshard_mod, name)
        monkeypatch.setattr(reshard_mod, name, lambda task, f=original, n=name: (calls.update([n]), f(task))[1])
    reshard(root, subset, out, seed=1, samples_per_shard=30, progress=False)

    assert calls == {"_index_tar": 1, "_write_shard": 1}
    assert not list(out.glob(".*.tmp-*"))
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference").glob("*.tar")}
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == reference


@pytest.mark.timeout(120)
def test_a_killed_reshard_resumes_at_once_and_rewrites_no_finished_shard(pool, tmp_path, monkeypatch, capsys):
    """A real kill -9 of a process holding the folder, in the middle of its third shard: the lock dies with
    it, so the rerun does not wait; it writes only the shards not finished and removes the dead temporary."""
    root, uids = pool
    subset = subset_with_repeats(uids)
    write_subset(tmp_path / "subset.npy", subset)
    out = tmp_path / "out"
    reshard(root, subset, tmp_path / "reference", seed=1, samples_per_shard=20, progress=False)
    die_in_third_shard = f"""
import os, signal
from siftbench.benchmark.core.uids import read_subset
from siftbench.benchmark.stages import reshard as r

write, calls = r._write_shard, []
def write_shard(task):
    calls.append(1)
    if len(calls) == 3:  # its first member goes in, and the process dies with the tar half written
        r._add = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    return write(task)
r._write_shard = write_shard
r.reshard({str(root)!r}, read_subset({str(tmp_path / "subset.npy")!r}), {str(out)!r}, seed=1, samples_per_shard=20,
          progress=False)
"""
    killed = subprocess.run([sys.executable, "-c", die_in_third_shard], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert sorted(finished) == ["00000.tar", "00001.tar"] and len(list(out.glob(".*.tmp-*"))) == 1

    calls = Counter()
    original = reshard_mod._write_shard
    monkeypatch.setattr(reshard_mod, "_write_shard", lambda task: (calls.update(["write"]), original(task))[1])
    stats = reshard(root, subset, out, seed=1, samples_per_shard=20, progress=False)
    assert "in use by" not in capsys.readouterr().err
    assert calls["write"] == stats["num_shards"] - 2
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar") if p.name in finished} == finished
    assert not list(out.glob(".*.tmp-*"))
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference").glob("*.tar")}
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == reference


def test_another_subset_in_the_same_folder_is_refused(pool, tmp_path):
    root, uids = pool
    reshard(root, hex_to_uids(uids[:50]), tmp_path / "out", seed=0, progress=False)
    with pytest.raises(StageError, match=r"another reshard.*subset_sha256"):
        reshard(root, hex_to_uids(uids[:60]), tmp_path / "out", seed=0, progress=False)


def test_a_cache_folder_is_written_anew_where_a_users_folder_is_refused(pool, tmp_path):
    root, uids = pool
    reshard(root, hex_to_uids(uids[:60]), tmp_path / "fresh", seed=0, progress=False)
    reshard(root, hex_to_uids(uids[:50]), tmp_path / "out", seed=0, progress=False)
    reshard(root, hex_to_uids(uids[:60]), tmp_path / "out", seed=0, progress=False, on_change="restart")
    assert stream(tmp_path / "out") == stream(tmp_path / "fresh")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == sorted(
        p.name for p in (tmp_path / "fresh").glob("*.tar"))


def test_min_shards_and_webdataset_can_read_the_output(pool, tmp_path):
    import webdataset as wds

    root, uids = pool
    stats = reshard(root, hex_to_uids(uids[:10]), tmp_path / "out", seed=0, min_shards=4, progress=False)
    assert stats["num_shards"] == 4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dataset = wds.WebDataset(str(tmp_path / "out" / manifest["pattern"]), shardshuffle=False)
    assert sum(1 for sample in dataset if "png" in sample and "txt" in sample) == 10


def test_damaged_input_is_skipped_and_counted(tmp_path):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=2, per_shard=10, seed=1)
    # Shard 1: cut in the middle of its sixth sample's image.
    tar1 = root / "shards" / "00000001.tar"
    with tarfile.open(tar1) as tar:
        cut = [m for m in tar.getmembers() if m.name.endswith(".png")][5].offset_data + 10
    tar1.write_bytes(tar1.read_bytes()[:cut])
    # Shard 2: one sample whose image bytes are not an image, one with no uid, one with no caption.
    bad = ["ee" * 16, "ff" * 16]
    with tarfile.open(root / "shards" / "00000002.tar", "w") as tar:
        for key, members in (
            ("a", {"png": b"not a png", "txt": b"x", "json": json.dumps({"uid": bad[0]}).encode()}),
            ("b", {"png": b"\x89PNG", "txt": b"y"}),
            ("c", {"png": b"\x89PNG", "json": json.dumps({"uid": bad[1]}).encode()}),
        ):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    subset = sort_uids(hex_to_uids(uids + bad))
    stats = reshard(root, subset, tmp_path / "out", seed=0, progress=False)
    assert stats["damaged_tars"] == 1 and stats["damaged_members"] == 1
    assert stats["damaged_images"] == 1 and stats["samples_without_uid"] == 1 and stats["incomplete_samples"] == 1
    # 10 intact + 5 before the cut; the sixth lost its image, later ones are beyond the end of the file.
    assert stats["num_samples"] == 15
    assert stats["missing_from_pool"] == 5 + 1  # the cut sample and the 4 after it, 1 with no caption


def test_a_garbled_header_loses_one_member_not_the_rest_of_the_tar(tmp_path, capfd):
    root = tmp_path / "pool"
    uids = make_tiny_pool(root, n_shards=1, per_shard=10, seed=2)
    tar0 = root / "shards" / "00000000.tar"
    with tarfile.open(tar0) as tar:
        header = [m for m in tar.getmembers() if m.name.endswith(".png")][3].offset  # the 4th sample's image
    raw = bytearray(tar0.read_bytes())
    raw[header : header + 64] = b"\xee" * 64
    tar0.write_bytes(bytes(raw))
    stats = reshard(root, sort_uids(hex_to_uids(uids)), tmp_path / "out", seed=0, progress=False)
    assert stats["damaged_tars"] == 1 and stats["damaged_members"] == 1
    assert stats["incomplete_samples"] == 1  # the 4th sample kept its caption and uid, not its image
    assert stats["num_samples"] == 9 and stats["missing_from_pool"] == 1  # the 6 after the damage are kept
    assert {uid for _, _, uid in stream(tmp_path / "out")} == set(uids) - {uids[3]}
    warning = [line for line in capfd.readouterr().err.splitlines() if "damaged tar" in line]
    assert len(warning) == 1 and warning[0].startswith("siftbench: warning: ") and "00000000.tar" in warning[0]
    assert f"at byte {header:,}" in warning[0] and "1 member lost" in warning[0]


def test_helpful_errors(tmp_path, pool):
    root, uids = pool
    with pytest.raises(PoolError, match="no pool tars"):
        reshard(tmp_path / "nowhere", hex_to_uids(uids[:3]), tmp_path / "out", seed=0, progress=False)
    with pytest.raises(SubsetError, match="none of the 1 subset uids"):
        reshard(root, hex_to_uids(["12" * 16]), tmp_path / "out2", seed=0, progress=False)
    with pytest.raises(SubsetError, match="dtype"):
        reshard(root, np.arange(3), tmp_path / "out3", seed=0, progress=False)
