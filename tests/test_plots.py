"""Diagnostics plots: score histograms, concept bars and defect bars land in the run directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.experiment.plots import write_filter_plots
from siftbench.benchmark.stages.select import run_filter


def test_plots_for_a_clip_then_balance_run(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pool"
    (root / "metadata").mkdir(parents=True)
    shapes = rng.choice(["circle", "square", "star"], size=300, p=[0.7, 0.2, 0.1])
    scores = rng.random(300).astype(np.float32)
    scores[:3] = np.nan
    pq.write_table(pa.table({"uid": [rng.bytes(16).hex() for _ in range(300)], "text": [f"a {s}" for s in shapes],
                             "clip_b32_similarity_score": scores}), root / "metadata" / "a.parquet")  # fmt: skip
    cfg = {"combine": "sequence", "steps": [{"name": "clip_score", "fraction": 0.8},
                                            {"name": "metaclip_balance", "vocabulary": ["circle", "square", "star"], "t": 30}]}  # fmt: skip
    run = tmp_path / "run"
    stats = run_filter(root, cfg, run)
    stats["diagnostics"] = {"removed": 10, "clean": {"false_removal_rate": 0.01},
                            "defects": {"spam": {"planted": 5, "removed": 4, "recall": 0.8},
                                        "misaligned": {"planted": 0, "removed": 0, "recall": None}}}  # fmt: skip
    paths = write_filter_plots(run, run / "scores", stats)
    names = sorted(p.name for p in paths)
    assert names == ["plot_concepts_1_metaclip_balance.png", "plot_defects.png", "plot_scores_0_clip_score_clip_score.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.parent == run
    # With the notes recorded (once the pipeline stores them), the bars use the step's own counts.
    stats["steps"][1]["notes"] = {"concept_counts_before": {"circle": 100, "star": 5}, "concept_counts_after": {"circle": 30, "star": 5}}
    assert any(p.name.startswith("plot_concepts") for p in write_filter_plots(run, run / "scores", stats))
