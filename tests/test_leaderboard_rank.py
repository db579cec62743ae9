"""Rankings: mean ± std over seeds, Welch's t-test against the leader, unranked short entries, exports."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest
from leaderboard_fixtures import FAKES, TASKS, make_pool, make_run
from scipy.stats import ttest_ind

from siftbench.leaderboard import show, submit
from siftbench.leaderboard.rank import ALPHA, load_boards, welch_p_value


def flat(level: float) -> dict[str, float]:
    return dict.fromkeys(TASKS, level)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A leader, a near tie, a clear loser, a two-seed entry scoring highest of all, and hostile names."""
    tmp_path = tmp_path_factory.mktemp("board")
    pool = make_pool(tmp_path / "pool")
    store = tmp_path / "lb.sqlite"
    entries = {
        "leader": [0.500, 0.504, 0.496],
        "close": [0.499, 0.503, 0.494],
        "far": [0.400, 0.402, 0.398],
        "lucky": [0.900, 0.910],
        "=HYPERLINK(1)": [0.300, 0.301, 0.302],
        "a | b <b>": [0.200, 0.201, 0.202],
    }
    for i, (name, levels) in enumerate(entries.items()):
        dirs = [make_run(tmp_path / "runs", pool, f"e{i}", s, scores=flat(v), fraction=0.2 + 0.1 * i)
                for s, v in enumerate(levels)]  # fmt: skip
        submit(dirs, name, "filtering", store, pool, **FAKES)
    return store


def test_welch_matches_scipy_and_handles_no_spread():
    a, b = [0.5, 0.51, 0.49], [0.45, 0.47, 0.44, 0.46]
    assert welch_p_value(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p_value([0.3] * 3, [0.3] * 3) == 1.0
    assert welch_p_value([0.3] * 3, [0.4] * 3) == 0.0
    assert math.isnan(welch_p_value([0.3], [0.3, 0.4]))


def test_seeds_are_aggregated_and_ties_with_the_leader_marked(board):
    (b,) = load_boards(board, "toy", "filtering")
    by_name = {e.name: e for e in b.entries}
    leader = by_name["leader"]
    assert leader.rank == 1 and leader.mean == pytest.approx(0.5) and leader.std == pytest.approx(0.004)
    close, far = by_name["close"], by_name["far"]
    assert close.rank == 2 and close.tied_with_leader and close.p_value >= ALPHA
    assert far.rank == 3 and not far.tied_with_leader and far.p_value < ALPHA
    # Two seeds: listed after every ranked entry, never ranked, whatever its score.
    lucky = by_name["lucky"]
    assert lucky.rank is None and b.entries[-1] is lucky and "unranked (2 seeds)" in lucky.flags("toy")
    assert [e.rank for e in b.entries] == [1, 2, 3, 4, 5, None]
    assert lucky.task_stats("shapes") == (pytest.approx(0.905), pytest.approx(0.00707, abs=1e-5))


def test_the_table_shows_ranks_ties_and_the_rule(board):
    text = show(board, "toy")
    lines = text.splitlines()
    row = {re.split(r"\s{2,}", line)[1]: line for line in lines if line[:1] in "123456-" and "  " in line}
    assert row["leader"].startswith("1 ") and "0.5000 ± 0.0040" in row["leader"]
    assert row["close"].startswith("2 ≈")
    assert row["far"].startswith("3 ") and "≈" not in row["far"]
    assert row["lucky"].startswith("- ") and "unranked (2 seeds)" in row["lucky"]
    assert "Welch's t-test over seeds, alpha 0.05" in text and "fewer than 3 seeds" in text


def test_csv_export_is_complete_and_defuses_formulas(board):
    rows = list(csv.DictReader(io.StringIO(show(board, "toy", fmt="csv"))))
    assert len(rows) == 6
    names = {r["name"] for r in rows}
    assert "'=HYPERLINK(1)" in names and "=HYPERLINK(1)" not in names
    leader = next(r for r in rows if r["name"] == "leader")
    assert leader["rank"] == "1" and float(leader["average_mean"]) == pytest.approx(0.5)
    assert float(leader["shapes_mean"]) == pytest.approx(0.5) and leader["seeds"] == "3"


def test_markdown_export_escapes_names(board):
    text = show(board, "toy", fmt="markdown")
    assert "a \\| b &lt;b&gt;" in text and "<b>" not in text
    assert "| 2 ≈ | close |" in text


def test_json_export_has_no_nan(board):
    data = json.loads(show(board, fmt="json"), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    (b,) = data["boards"]
    assert len(b["entries"]) == 6 and b["tasks"] == sorted(TASKS)


def test_results_of_different_worlds_never_share_a_ranking(tmp_path):
    store = tmp_path / "lb.sqlite"
    for world in ({"version": "1", "hash": "aaa"}, {"version": "1", "hash": "bbb"}, None):
        where = tmp_path / str(world and world["hash"])
        pool = make_pool(where / "pool", world=world)
        dirs = [make_run(where / "runs", pool, "x", s, world=world) for s in range(3)]
        submit(dirs, "same name", "filtering", store, pool, **FAKES)
    boards = load_boards(store, "toy")
    assert len(boards) == 3 and all(len(b.entries) == 1 and b.entries[0].rank == 1 for b in boards)
    assert {b.world_hash for b in boards} == {"aaa", "bbb", ""}
    assert show(store, "toy").count("== toy · filtering ==") == 3


def test_show_says_when_there_is_nothing(board, tmp_path):
    assert show(board, "small").startswith("no entries for small")
    from siftbench.leaderboard.store import StoreError

    with pytest.raises(StoreError, match="no leaderboard store"):
        show(tmp_path / "missing.sqlite")
