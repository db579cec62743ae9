import numpy as np
import pytest

from siftbench.benchmark.core.errors import SubsetError
from siftbench.benchmark.core.uids import (
    UID_DTYPE,
    hex_to_uids,
    isin_uids,
    read_subset,
    uid_to_words,
    uids_to_hex,
    write_subset,
)


def test_hex_to_uids_matches_datacomp_divmod_including_short_hex():
    hexes = ["ff", "0123456789abcdef0123456789abcdef", "A" * 32, "fedcba9876543210f", "0" * 32]
    words = hex_to_uids(hexes)
    assert [(int(hi), int(lo)) for hi, lo in words] == [uid_to_words(h) for h in hexes]


def test_hex_round_trip_on_random_uids():
    rng = np.random.default_rng(0)
    hexes = [rng.bytes(16).hex() for _ in range(1000)]
    assert uids_to_hex(hex_to_uids(hexes)) == hexes


@pytest.mark.parametrize(
    ("bad", "message"),
    [(["zz"], "not a hex string"), (["1" * 33], "more than 32 hex digits"), ([None], "missing")],
)
def test_bad_uids_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        hex_to_uids(["00" * 16, *bad])


def test_write_subset_sorts_and_keeps_repeats(tmp_path):
    uids = hex_to_uids(["03", "01", "02", "01"])
    path = write_subset(tmp_path / "subset.npy", uids)
    loaded = read_subset(path)
    assert loaded.dtype == UID_DTYPE
    assert [int(lo) for lo in loaded["f1"]] == [1, 1, 2, 3]


def test_read_subset_refuses_int64(tmp_path):
    np.save(tmp_path / "s.npy", np.arange(5, dtype=np.int64))
    with pytest.raises(SubsetError, match=r"dtype int64, expected .*write_subset"):
        read_subset(tmp_path / "s.npy")


def test_read_subset_refuses_unsorted(tmp_path):
    np.save(tmp_path / "s.npy", hex_to_uids(["02", "01"]))
    with pytest.raises(SubsetError, match="not sorted ascending"):
        read_subset(tmp_path / "s.npy")


def test_read_subset_never_unpickles(tmp_path):
    np.save(tmp_path / "s.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SubsetError, match="holds pickled Python objects, which siftbench never unpickles"):
        read_subset(tmp_path / "s.npy")


def test_missing_subset_file(tmp_path):
    with pytest.raises(SubsetError, match="no such subset file"):
        read_subset(tmp_path / "nope.npy")


def test_isin_uids():
    pool = hex_to_uids(["01", "02", "03"])
    assert isin_uids(hex_to_uids(["02", "09"]), pool).tolist() == [True, False]


def test_sort_uids_orders_low_words_under_equal_high_words():
    from siftbench.benchmark.core.uids import sort_uids

    uids = np.array([(5, 9), (1, 2), (5, 3), (1, 2), (0, 7)], dtype=UID_DTYPE)
    assert sort_uids(uids).tolist() == [(0, 7), (1, 2), (1, 2), (5, 3), (5, 9)]
