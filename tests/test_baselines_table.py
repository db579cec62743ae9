"""The baselines table: saturated tasks leave the headline, mean ± std over seeds, oracle gap closed."""

import pytest

from siftbench.benchmark.experiment.baselines import (
    markdown_table,
    plot_summary,
    resolving_power,
    summarize_table,
)


def results(seed, **scores):
    return {"run": {"seed": seed}, "subset": {"size": 100},
            "tasks": {t: {"score": v} for t, v in scores.items()}}


@pytest.fixture
def table():
    return {
        "no_filter": [results(0, shapes=0.20, colours=0.99), results(1, shapes=0.22, colours=0.98)],
        "clip_score": [results(0, shapes=0.30, colours=1.00), results(1, shapes=0.32, colours=0.99)],
        "oracle": [results(0, shapes=0.40, colours=1.00), results(1, shapes=0.42, colours=1.00)],
    }


def test_saturated_task_leaves_the_headline(table):
    summary = summarize_table(table)
    assert summary["left_out"] == ["colours"]
    assert summary["rows"]["clip_score"]["headline"][0] == pytest.approx(0.31)


def test_a_task_saturated_for_only_some_strategies_stays(table):
    table["no_filter"][0]["tasks"]["colours"]["score"] = 0.5
    assert summarize_table(table)["left_out"] == []


def test_oracle_gap_closed_and_pooled_std(table):
    summary = summarize_table(table)
    assert summary["rows"]["clip_score"]["oracle_gap_closed"]["headline"] == pytest.approx(0.5)
    assert summary["rows"]["no_filter"]["oracle_gap_closed"]["shapes"] == pytest.approx(0.0)
    assert summary["pooled_std"] == pytest.approx(0.0141421, rel=1e-4)  # every row: std of (x, x + 0.02)


def test_markdown_and_plot(table, tmp_path):
    summary = summarize_table(table)
    text = markdown_table(summary)
    assert "| clip_score | 100 | 31.0 ± 1.4 | 99.5 ± 0.7 | **31.0 ± 1.4** | 0.50 |" in text
    assert "left out (above 95% for every strategy): colours" in text
    assert plot_summary(summary, tmp_path / "t.png").stat().st_size > 1000


def test_no_gap_ratio_where_oracle_and_no_filter_are_within_a_point(table):
    summary = summarize_table(table)
    assert summary["rows"]["clip_score"]["oracle_gap_closed"]["colours"] is not None  # 98.5 vs 100.0: 1.5 points
    table["oracle"][0]["tasks"]["colours"]["score"] = 0.99
    table["oracle"][1]["tasks"]["colours"]["score"] = 0.98
    assert summarize_table(table)["rows"]["clip_score"]["oracle_gap_closed"]["colours"] is None


def test_tasks_outside_the_headline_group_are_never_averaged(table):
    for rs in table.values():
        for r in rs:
            r["tasks"]["digits_real"] = {"score": 0.1, "groups": ["classification", "transfer"]}
    summary = summarize_table(table)
    assert summary["headline_tasks"] == ["shapes"] and summary["probes"] == ["digits_real"]
    assert "not in the suite's headline group: digits_real" in markdown_table(summary)


def test_resolving_power_reports_gaps_chance_and_tail_noise(table):
    for rs in table.values():
        for r in rs:
            r["tasks"]["shapes"].update(chance=0.1, groups=["headline", "tail"])
    table["clip_score"][1]["tasks"]["shapes"]["score"] = 0.36  # a noisier middle row: std 4.24 points
    text = resolving_power(summarize_table(table))
    assert "| no_filter | clip_score | +12.0 | +4.4 |" in text  # 12 points over a pooled std of 2.71
    # no_filter and oracle: std 1.41 over a 20-point gap; every row: 2.71 over 20
    assert "| shapes (tail) | 21.0 | 2.1 | 41.0 | 0.51 | 0.07 | 0.14 |" in text
    del table["oracle"]
    assert resolving_power(summarize_table(table)) == ""


def test_collect_only_names_the_runs_that_are_missing(tmp_path):
    from siftbench.benchmark.core.errors import ConfigError
    from siftbench.benchmark.experiment.baselines import baselines_main

    with pytest.raises(ConfigError, match=r"no results.json in .*no_filter-toy-s3.*no_filter-toy-s4"):
        baselines_main([3, 4], ["no_filter"], [f"runs_dir={tmp_path}", "scale=toy"], collect_only=True)


def test_comparison_against_a_reference_row(table):
    from siftbench.benchmark.experiment.baselines import comparison

    for rs in table.values():
        for r in rs:
            r["tasks"]["tail"] = {"score": r["tasks"]["shapes"]["score"] / 2, "groups": ["headline", "tail"]}
    table["oracle"][1]["tasks"]["tail"]["score"] = 0.25  # oracle tail: 20, 25 -> std 3.54; others 0.71
    text = comparison(summarize_table(table), "clip_score")
    # headline (mean of shapes and tail per seed): no_filter 15.75, clip 23.25; stds 1.06, 1.06, 2.47 -> pooled
    # 1.67, so -7.5 points = -4.5 std. Tail: 10.5 vs 15.5, stds 0.71, 0.71, 3.54 -> pooled 2.12: -2.4 std.
    # Paired by seed: no_filter sits exactly 10 shapes and 5 tail points under clip_score in both seeds (std 0),
    # while the oracle's noisy tail (+5 points in seed 0, +9 in seed 1) pairs to +7.0 ± 2.8.
    assert "| no_filter | -7.5 | -4.5 | -7.5 ± 0.0 | -5.0 | -2.4 | -5.0 ± 0.0 |" in text
    assert "| oracle | +8.5 | +5.1 | +8.5 ± 1.4 | +7.0 | +3.3 | +7.0 ± 2.8 |" in text
    assert "clip_score |" not in text.split("|---|", 1)[1]
    assert comparison(summarize_table(table), "missing") == ""


def test_experiment_option_picks_another_strategy_set(tmp_path):
    from siftbench.benchmark.core.errors import ConfigError
    from siftbench.benchmark.experiment.baselines import baselines_main

    with pytest.raises(ConfigError, match=r"configs/experiment/filters.yaml has \['clip_score', 'clip_balance'"):
        baselines_main([0], ["nope"], [f"runs_dir={tmp_path}", "scale=toy"], experiment="filters")
    with pytest.raises(ConfigError, match=r"no results.json in .*clip_balance-toy-s0"):
        baselines_main([0], ["clip_balance"], [f"runs_dir={tmp_path}", "scale=toy"], collect_only=True,
                       experiment="filters")
