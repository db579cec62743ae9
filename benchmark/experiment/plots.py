"""Diagnostics plots of a filter run, written as PNG next to report.md (which links them).

- ``plot_scores_<step>_<column>.png``: a histogram per score column a step wrote (embeddings, hashes
  and concept ids are not scores and are skipped);
- ``plot_concepts_<step>.png``: concept counts before and after, per concept, for balancing steps
  (from the step's notes when the pipeline recorded them, else recomputed from its score files: the
  whole pool before, the final subset after);
- ``plot_defects.png``: on the embedded world, per planted defect the share removed (recall) and the
  share of all removals it accounts for (how precisely the filter aims at it).

Matplotlib's object API with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from siftbench.benchmark.core.atomic import atomic_path
from siftbench.benchmark.core.uids import isin_uids, read_subset

NOT_SCORES = re.compile(r"^(emb|px|sm|sha|concept)\d+$|^(code|mirror_code|hashed|n_concepts|eval_task|match)$")


def write_filter_plots(run_dir: str | Path, scores_dir: str | Path, stats: dict[str, Any]) -> list[Path]:
    """Write the run's diagnostics plots into ``run_dir``; return their paths (for report.md links)."""
    run_dir, scores_dir = Path(run_dir), Path(scores_dir)
    written: list[Path] = []
    for step in stats.get("steps", []):
        table = _read_scores(scores_dir / step["step"])
        if table is None:
            continue
        for column in table.column_names:
            if column in ("uid_hi", "uid_lo") or NOT_SCORES.match(column):
                continue
            values = table.column(column).to_numpy(zero_copy_only=False)
            if values.dtype.kind in "fiu" and len(values):
                written.append(_histogram(run_dir / f"plot_scores_{step['step']}_{column}.png", values,
                                          f"{step['step']}: {column}"))  # fmt: skip
        counts = _concept_counts(step, table, run_dir / "subset.npy")
        if counts is not None:
            written.append(_concept_bars(run_dir / f"plot_concepts_{step['step']}.png", *counts, step["step"]))
    defects = (stats.get("diagnostics") or {}).get("defects")
    if defects:
        written.append(_defect_bars(run_dir / "plot_defects.png", defects, stats["diagnostics"]))
    return written


def _read_scores(folder: Path):
    files = sorted(folder.glob("*.arrow"))
    if not files:
        return None
    return pa.concat_tables([feather.read_table(f) for f in files])


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: imported where it is used
    from matplotlib.figure import Figure  # heavy: imported where it is used

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _histogram(path: Path, values: np.ndarray, title: str) -> Path:
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(finite, bins=min(60, max(5, int(np.sqrt(len(finite))))), color="#4c72b0")
    nan = len(values) - len(finite)
    ax.set_title(title + (f" ({nan:,} NaN not shown)" if nan else ""))
    ax.set_xlabel("value")
    ax.set_ylabel("rows")
    return _save(fig, path)


def _concept_counts(step: dict[str, Any], table, subset_path: Path):
    """(names, before, after, labels) from the step's notes, or recomputed from its score files."""
    notes = step.get("notes") or {}
    if "concept_counts_before" in notes:
        before = notes["concept_counts_before"]
        after = notes.get("concept_counts_after", {})
        names = sorted(before, key=lambda k: -before[k])
        return names, [before[n] for n in names], [after.get(n, 0) for n in names], ("step input", "step output")
    ids = [c for c in table.column_names if re.fullmatch(r"concept\d+", c)]
    if not ids or not subset_path.exists():
        return None

    matrix = np.stack([table.column(c).to_numpy() for c in ids], axis=1)
    uids = np.empty(table.num_rows, dtype=np.dtype("u8,u8"))
    uids["f0"], uids["f1"] = table.column("uid_hi").to_numpy(), table.column("uid_lo").to_numpy()

    kept = isin_uids(uids, read_subset(subset_path))
    size = int(matrix.max()) + 1 if matrix.size and matrix.max() >= 0 else 0
    if size == 0:
        return None
    before = np.bincount(matrix[matrix >= 0], minlength=size)
    after = np.bincount(matrix[kept][matrix[kept] >= 0], minlength=size)
    names = [f"concept {i}" for i in range(size)]
    order = np.argsort(-before, kind="stable")
    return [names[i] for i in order], before[order].tolist(), after[order].tolist(), ("pool", "final subset")


def _concept_bars(path: Path, names: list[str], before: list[int], after: list[int], labels, step: str) -> Path:
    shown = min(len(names), 60)
    fig = _figure(width=max(6.4, 0.22 * shown + 2), height=4.5)
    ax = fig.add_subplot()
    x = np.arange(shown)
    ax.bar(x - 0.2, before[:shown], width=0.4, label=labels[0], color="#bbbbbb")
    ax.bar(x + 0.2, after[:shown], width=0.4, label=labels[1], color="#dd8452")
    ax.set_xticks(x, names[:shown], rotation=90, fontsize=7)
    ax.set_ylabel("samples")
    ax.set_title(f"{step}: concept counts" + (f" (top {shown} of {len(names)})" if shown < len(names) else ""))
    ax.legend()
    return _save(fig, path)


def _defect_bars(path: Path, defects: dict[str, Any], diagnostics: dict[str, Any]) -> Path:
    names = [d for d, v in defects.items() if v.get("planted")]
    removed_total = max(int(diagnostics.get("removed", 0)), 1)
    recall = [defects[d].get("recall") or 0.0 for d in names]
    share = [defects[d]["removed"] / removed_total for d in names]
    fig = _figure(width=max(6.4, 0.6 * len(names) + 2))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x - 0.2, recall, width=0.4, label="recall (planted rows removed)", color="#55a868")
    ax.bar(x + 0.2, share, width=0.4, label="share of all removals", color="#8172b2")
    clean = diagnostics.get("clean", {}).get("false_removal_rate")
    title = "planted defects"
    if clean is not None:
        title += f" (clean rows removed: {clean:.1%})"
    ax.set_title(title)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, path)
