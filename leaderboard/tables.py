"""Text renderings of a ranking: a terminal table, CSV and markdown.

Names are submitted text: the terminal table replaces control characters (no escape sequences reach
the terminal), markdown escapes what markdown or HTML would interpret, and CSV defuses cells a
spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .rank import RULE_TEXT, Board, Entry, load_boards

FORMATS = ("table", "csv", "markdown", "json")


def show(
    store_path: str | Path, scale: str | None = None, track: str | None = None, fmt: str = "table"
) -> str:
    """The rankings of one scale (or all) as text in ``fmt``: table, csv, markdown or json."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    boards = load_boards(store_path, scale, track)
    if not boards:
        which = " ".join(x for x in (scale, track) if x) or "any scale"
        return f"no entries for {which} in {store_path}\n"
    return {"table": to_table, "csv": to_csv, "markdown": to_markdown, "json": to_json}[fmt](boards)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)


def _score(mean: float, std: float | None, digits: int = 4) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _rank(entry: Entry) -> str:
    if entry.rank is None:
        return "-"
    return f"{entry.rank}{' ≈' if entry.tied_with_leader else ''}"


def to_table(boards: list[Board]) -> str:
    out = []
    for board in boards:
        rows = [["rank", "name", "average", "seeds", "subset", "flags"]]
        for e in board.entries:
            rows.append(
                [
                    _rank(e),
                    _printable(e.name),
                    _score(e.mean, e.std),
                    str(e.n_seeds),
                    f"{e.subset_size:.0f}",
                    ", ".join(e.flags(board.scale)),
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        align = ["<", "<", ">", ">", ">", "<"]
        out.append(f"== {board.title} == {_printable(board.provenance)}")
        for r in rows:
            out.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths, strict=True)).rstrip())
        out.append("")
    out.append(RULE_TEXT)
    return "\n".join(out) + "\n"


def _defuse(cell: str) -> str:
    # A leading = + - @ (or tab/CR) makes spreadsheets evaluate the cell.
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def to_csv(boards: list[Board]) -> str:
    tasks = sorted({t for b in boards for t in b.tasks})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "scale",
            "track",
            "world_version",
            "world_hash",
            "pool_hash",
            "suite",
            "suite_version",
            "rank",
            "tied_with_leader",
            "p_value",
            "name",
            "average_mean",
            "average_std",
            "seeds",
            "subset_size",
            "eval_copies_kept",
            "reevaluated",
            "filter_config",
            *[f"{t}_mean" for t in tasks],
        ]
    )
    for b in boards:
        for e in b.entries:
            task_means = []
            for t in tasks:
                mean, _ = e.task_stats(t)
                task_means.append("" if math.isnan(mean) else f"{mean:.6f}")
            writer.writerow(
                [
                    b.scale,
                    b.track,
                    b.world_version,
                    b.world_hash,
                    b.pool_hash,
                    _defuse(b.suite_name),
                    b.suite_version,
                    e.rank or "",
                    int(e.tied_with_leader) if e.rank and e.rank > 1 else "",
                    "" if e.p_value is None else f"{e.p_value:.4g}",
                    _defuse(e.name),
                    f"{e.mean:.6f}",
                    "" if e.std is None else f"{e.std:.6f}",
                    e.n_seeds,
                    f"{e.subset_size:.0f}",
                    "" if e.eval_copies_kept is None else e.eval_copies_kept,
                    int(e.reevaluated),
                    _defuse(json.dumps(e.filter_config, sort_keys=True)),
                    *task_means,
                ]
            )
    return buffer.getvalue()


def _md(text: str) -> str:
    escaped = (
        _printable(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    )
    for char in "|`*_[]#":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def to_markdown(boards: list[Board]) -> str:
    out = []
    for b in boards:
        out.append(f"### {_md(b.title)}\n\n{_md(b.provenance)}\n")
        tasks = b.tasks
        out.append(
            "| rank | name | average | seeds | subset | " + " | ".join(_md(t) for t in tasks) + " | flags |"
        )
        out.append("|---:|---|---:|---:|---:|" + "---:|" * len(tasks) + "---|")
        for e in b.entries:
            cells = [_rank(e), _md(e.name), _score(e.mean, e.std), str(e.n_seeds), f"{e.subset_size:.0f}"]
            cells += [_score(*e.task_stats(t), digits=3) for t in tasks]
            cells.append(_md(", ".join(e.flags(b.scale))))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(RULE_TEXT)
    return "\n".join(out) + "\n"


def board_dict(board: Board) -> dict:
    """A board as plain data: what the JSON export and the web page both read."""
    entries = []
    for e in board.entries:
        entries.append(
            {
                "id": e.id,
                "name": e.name,
                "rank": e.rank,
                "tied_with_leader": e.tied_with_leader,
                "p_value": e.p_value,
                "seeds": e.n_seeds,
                "average": e.mean,
                "average_std": e.std,
                "subset_size": e.subset_size,
                "eval_copies_kept": e.eval_copies_kept,
                "reevaluated": e.reevaluated,
                "flags": e.flags(board.scale),
                "filter_config": e.filter_config,
                "filters": e.filters,
                "submitted": e.created_at,
                "tasks": {t: dict(zip(("mean", "std"), e.task_stats(t), strict=True)) for t in board.tasks},
                "runs": [vars(r) for r in e.runs],
            }
        )
    return {
        "id": board.id,
        "scale": board.scale,
        "track": board.track,
        "title": board.title,
        "provenance": board.provenance,
        "world": {"version": board.world_version, "hash": board.world_hash},
        "pool": {"hash": board.pool_hash, "size": board.pool_size},
        "suite": {"name": board.suite_name, "version": board.suite_version, "hash": board.suite_hash},
        "tasks": board.tasks,
        "entries": entries,
    }


def to_json(boards: list[Board]) -> str:
    return (
        json.dumps(json_safe({"rule": RULE_TEXT, "boards": [board_dict(b) for b in boards]}), indent=2) + "\n"
    )


def json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers and browsers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
