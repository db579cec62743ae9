"""`siftbench baselines`: the baseline strategies over several seeds, one markdown table with mean ± std.

The headline average leaves out tasks that every strategy saturates (> 95%): they cannot tell
strategies apart and only compress the differences. On the world, every row also reports the
oracle gap closed, (score - no_filter) / (oracle - no_filter), against the oracle (the clean
pairs only, every object drawn equally often: configs/filter/oracle.yaml).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import write_json, write_text
from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.results import load_results
from siftbench.benchmark.experiment.config import compose_config, to_dict
from siftbench.benchmark.experiment.runner import run_experiment
from siftbench.leaderboard.submission import submit_groups

SATURATED = 0.95


def run_baselines(
    strategies: dict[str, list[str]], seeds: Sequence[int], overrides: Sequence[str] = (), progress: bool = True
) -> dict[str, list[Path]]:
    """Run every strategy x seed (finished runs are reused); return run directories per strategy."""
    runs: dict[str, list[Path]] = {}
    for label, strategy_overrides in strategies.items():
        for seed in seeds:
            runs.setdefault(label, []).append(run_experiment(_run_config(label, strategy_overrides, overrides, seed), progress=progress))
    return runs


def finished_runs(
    strategies: dict[str, list[str]], seeds: Sequence[int], overrides: Sequence[str] = ()
) -> dict[str, list[Path]]:
    """The run directories `run_baselines` would use, each with its results.json; error naming any missing."""
    runs: dict[str, list[Path]] = {}
    for label, strategy_overrides in strategies.items():
        for seed in seeds:
            cfg = _run_config(label, strategy_overrides, overrides, seed)
            runs.setdefault(label, []).append(Path(cfg.runs_dir) / cfg.name)
    missing = [str(d) for dirs in runs.values() for d in dirs if not (d / "results.json").exists()]
    if missing:
        raise ConfigError(f"--collect-only: no results.json in {', '.join(missing)}; run them first (drop --collect-only)")
    return runs


def _run_config(label: str, strategy_overrides: Sequence[str], overrides: Sequence[str], seed: int) -> Any:
    cfg = compose_config([*strategy_overrides, *overrides, f"seed={seed}"])
    cfg.name = f"{label}-{cfg.scale.name}-s{seed}"
    return cfg


def collect(runs: dict[str, list[Path]]) -> dict[str, list[dict[str, Any]]]:
    return {label: [load_results(d) for d in dirs] for label, dirs in runs.items()}


def headline_tasks(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """(kept, left out) among the suite's `headline` group: a task is left out when every strategy's mean
    main metric is above 95%. Tasks outside the group (probes such as digits_real) are never averaged."""
    first = next(iter(results.values()))[0]["tasks"]
    tasks = [t for t, task in first.items() if "headline" in task.get("groups", ["headline"])]
    left_out = [
        t for t in tasks
        if all(np.mean([r["tasks"][t]["score"] for r in rs]) > SATURATED for rs in results.values())
    ]
    return [t for t in tasks if t not in left_out], left_out


def summarize_table(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per strategy: per-task and headline mean/std over seeds, pooled std, oracle gap closed."""
    kept, left_out = headline_tasks(results)
    rows: dict[str, dict[str, Any]] = {}
    for label, rs in results.items():
        per_task = {t: [r["tasks"][t]["score"] for r in rs] for t in rs[0]["tasks"]}
        headline = [float(np.mean([r["tasks"][t]["score"] for t in kept])) for r in rs]
        rows[label] = {
            "seeds": [r["run"]["seed"] for r in rs],
            "subset_size": int(np.mean([r["subset"]["size"] for r in rs])),
            "tasks": {t: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for t, v in per_task.items()},
            "headline": (float(np.mean(headline)), float(np.std(headline, ddof=1)) if len(headline) > 1 else 0.0),
            "headline_per_seed": headline,
            "tasks_per_seed": per_task,
        }
    pooled = float(np.sqrt(np.mean([row["headline"][1] ** 2 for row in rows.values()])))
    if "no_filter" in rows and "oracle" in rows:
        low, high = rows["no_filter"], rows["oracle"]
        for row in rows.values():
            row["oracle_gap_closed"] = {
                t: _gap(row["tasks"][t][0], low["tasks"][t][0], high["tasks"][t][0]) for t in row["tasks"]
            }
            row["oracle_gap_closed"]["headline"] = _gap(row["headline"][0], low["headline"][0], high["headline"][0])
    first = next(iter(results.values()))[0]["tasks"]
    probes = [t for t in first if t not in kept and t not in left_out]
    return {
        "headline_tasks": kept,
        "left_out": left_out,
        "probes": probes,
        "chance": {t: task.get("chance") for t, task in first.items()},
        "tail_tasks": [t for t, task in first.items() if "tail" in task.get("groups", [])],
        "pooled_std": pooled,
        "rows": rows,
    }


MIN_GAP = 0.01  # below one point between oracle and no_filter, a ratio would only magnify noise


def _gap(score: float, no_filter: float, oracle: float) -> float | None:
    span = oracle - no_filter
    return None if abs(span) < MIN_GAP else float((score - no_filter) / span)


def markdown_table(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    tasks = list(next(iter(rows.values()))["tasks"])
    has_gap = any("oracle_gap_closed" in r for r in rows.values())
    head = ["strategy", "subset", *tasks, "headline avg"] + (["oracle gap closed"] if has_gap else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        cells = [label, f"{row['subset_size']:,}"]
        cells += [_pm(*row["tasks"][t]) for t in tasks]
        cells.append(f"**{_pm(*row['headline'])}**")
        if has_gap:
            gap = row.get("oracle_gap_closed", {}).get("headline")
            cells.append("" if gap is None else f"{gap:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({s for r in rows.values() for s in r["seeds"]})
    notes = [
        "",
        f"Scores in %, mean ± std over seeds {seeds}. Headline average over {', '.join(summary['headline_tasks'])}"
        + (f"; left out (above {SATURATED:.0%} for every strategy): {', '.join(summary['left_out'])}" if summary["left_out"] else "")
        + (f"; not in the suite's headline group: {', '.join(summary['probes'])}" if summary.get("probes") else "")
        + f". Pooled seed std of the headline: {100 * summary['pooled_std']:.2f} points.",
    ]
    return "\n".join(lines + notes) + "\n"


def resolving_power(summary: dict[str, Any]) -> str:
    """How well the table tells strategies apart: adjacent headline gaps (table order) in pooled seed stds,
    no_filter against chance and the oracle per headline task, and the tail task's seed std against its
    no_filter -> oracle gap. Empty without no_filter and oracle rows."""
    rows, pooled = summary["rows"], summary["pooled_std"]
    if "no_filter" not in rows or "oracle" not in rows:
        return ""
    low, high = rows["no_filter"], rows["oracle"]
    lines = ["", "Resolving power:", "", "| from | to | headline gap | in pooled std |", "|---|---|---|---|"]
    for a, b in itertools.pairwise(rows):
        gap = rows[b]["headline"][0] - rows[a]["headline"][0]
        lines.append(f"| {a} | {b} | {100 * gap:+.1f} | {gap / pooled:+.1f} |" if pooled else f"| {a} | {b} | {100 * gap:+.1f} | |")
    lines += [
        "",
        "| headline task | no_filter | x chance | oracle | no_filter / oracle | seed std / gap: no_filter, oracle | all rows |",
        "|---|---|---|---|---|---|---|",
    ]

    def pooled_std(task: str, labels: Sequence[str]) -> float:
        return float(np.sqrt(np.mean([rows[label]["tasks"][task][1] ** 2 for label in labels])))

    for t in summary["headline_tasks"]:
        nf, orc, chance = low["tasks"][t][0], high["tasks"][t][0], summary["chance"].get(t)
        span = orc - nf
        ends, every = pooled_std(t, ["no_filter", "oracle"]), pooled_std(t, list(rows))
        lines.append(
            f"| {t}{' (tail)' if t in summary['tail_tasks'] else ''} | {100 * nf:.1f} | "
            + (f"{nf / chance:.1f}" if chance else "") + f" | {100 * orc:.1f} | "
            + (f"{nf / orc:.2f}" if orc else "") + " | "
            + (f"{ends / span:.2f} | {every / span:.2f}" if span > 0 else " | ") + " |"
        )
    return "\n".join(lines) + "\n"


def comparison(summary: dict[str, Any], reference: str) -> str:
    """Every row against one reference row (an experiment's `compare_to`): the headline and each tail task's
    difference, in points and in the table's pooled seed std of that quantity, and paired by seed (mean ± std
    of the per-seed differences), which cancels the noise that the rows of one seed share."""
    rows = summary["rows"]
    if reference not in rows or len(rows) < 2:
        return ""

    def per_seed(label: str, task: str | None) -> dict[int, float]:
        row = rows[label]
        values = row["headline_per_seed"] if task is None else row["tasks_per_seed"][task]
        return dict(zip(row["seeds"], values, strict=True))

    def pooled(task: str | None) -> float:
        stds = [row["headline"][1] if task is None else row["tasks"][task][1] for row in rows.values()]
        return float(np.sqrt(np.mean(np.square(stds))))

    def paired(label: str, task: str | None) -> str:
        ref = per_seed(reference, task)
        diffs = [v - ref[seed] for seed, v in per_seed(label, task).items() if seed in ref]
        return _pm(float(np.mean(diffs)), float(np.std(diffs, ddof=1)), sign=True) if len(diffs) > 1 else ""

    columns: list[str | None] = [None, *summary["tail_tasks"]]
    head = ["strategy"] + [f"Δ {t or 'headline'} | in pooled std | paired by seed" for t in columns]
    lines = ["", f"Against {reference} (pooled std over all rows; paired: mean ± std of the per-seed differences):",
             "", "| " + " | ".join(head) + " |", "|---|" + "---|---|---|" * len(columns)]  # fmt: skip
    for label, row in rows.items():
        if label == reference:
            continue
        cells = [label]
        for t in columns:
            mean, ref = (row["headline"][0], rows[reference]["headline"][0]) if t is None else (
                row["tasks"][t][0], rows[reference]["tasks"][t][0])
            std = pooled(t)
            cells += [f"{100 * (mean - ref):+.1f}", f"{(mean - ref) / std:+.1f}" if std else "", paired(label, t)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: Path) -> Path:
    """Per-task bars (mean ± std over seeds) for every strategy: the table, for people who would rather look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    tasks = [*next(iter(rows.values()))["tasks"], "headline"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2, 4.2), dpi=120)
    for i, (label, row) in enumerate(rows.items()):
        stats = [row["headline"] if t == "headline" else row["tasks"][t] for t in tasks]
        xs = np.arange(len(tasks)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(xs, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats], capsize=2, label=label)
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=20)
    ax.set_ylabel("score (%)")
    ax.set_title(f"baselines, mean ± std over seeds {sorted({s for r in rows.values() for s in r['seeds']})}")
    # Below the axes, at most five to a line: one line of nine labels ran off the figure and over the bars.
    ax.legend(fontsize=8, ncols=min(len(rows), 5), loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _pm(mean: float, std: float, sign: bool = False) -> str:
    return f"{100 * mean:{'+' if sign else ''}.1f} ± {100 * std:.1f}"


def store_oracle_gaps(runs: dict[str, list[Path]], summary: dict[str, Any]) -> None:
    """Write each run's oracle gap closed into its results.json (the strategy's seed-mean versus the
    seed-means of no_filter and oracle at the same scale)."""
    for label, dirs in runs.items():
        gap = summary["rows"][label].get("oracle_gap_closed")
        if gap is None:
            continue
        for d in dirs:
            path = Path(d) / "results.json"
            data = json.loads(path.read_text())
            data["oracle_gap_closed"] = gap
            write_json(path, data)


def baselines_main(
    seeds: Sequence[int],
    strategies: Sequence[str] | None,
    overrides: Sequence[str],
    out: Path | None = None,
    submit: bool = False,
    store: Path | None = None,
    progress: bool = True,
    collect_only: bool = False,
    experiment: str = "baselines",
) -> str:
    """Run an experiment's strategy set (configs/experiment/<experiment>.yaml), print its table; optionally
    submit every strategy to the leaderboard."""
    cfg = compose_config([f"+experiment={experiment}", *overrides])
    table_cfg = to_dict(cfg.experiment)
    # Rows in the order asked for (the resolving-power gaps compare neighbours), else the config's order.
    chosen = {k: table_cfg["strategies"][k] for k in (strategies or table_cfg["strategies"]) if k in table_cfg["strategies"]}
    unknown = sorted(set(strategies or ()) - set(table_cfg["strategies"]))
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; configs/experiment/{experiment}.yaml has {list(table_cfg['strategies'])}")
    runs = finished_runs(chosen, seeds, overrides) if collect_only else run_baselines(chosen, seeds, overrides, progress=progress)
    summary = summarize_table(collect(runs))
    store_oracle_gaps(runs, summary)
    table = markdown_table(summary) + resolving_power(summary)
    if table_cfg.get("compare_to"):
        table += comparison(summary, table_cfg["compare_to"])
    if out is not None:
        write_json(Path(out).with_suffix(".json"), summary)
        write_text(Path(out), table)
        plot_summary(summary, Path(out).with_suffix(".png"))
    if submit:
        # The oracle reads the world's ground truth: a reference line, never a leaderboard entry.
        entries = {label: dirs for label, dirs in runs.items() if label != "oracle"}
        for result in submit_groups(entries, "filtering", store):
            print(result.summary())
    return table
