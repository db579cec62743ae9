"""`siftbench bench`: speed figures as ratios against a reference measured in the same run.

These machines are noisy, so every figure is printed next to a reference measured moments before in
the same process: training from shards vs compute-only on in-memory tensors (same model, batch, threads,
precision), and our metadata scan vs DataComp's rule implemented the way their baseline script does it
(pandas, then a Python loop turning each hex uid into two words).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.uids import UID_DTYPE, read_subset, sort_uids
from siftbench.benchmark.stages.select import run_filter
from siftbench.benchmark.stages.train import benchmark_training_throughput

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def random_hex_uids(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 32-digit hex uids as an Arrow string array, built without a Python loop."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    offsets = pa.array(np.arange(0, 32 * (n + 1), 32, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets.buffers()[1], pa.py_buffer(chars.tobytes()))


def make_metadata_pool(root: Path, rows: int, files: int = 16, seed: int = 0) -> Path:
    """A DataComp-shaped metadata pool (no images): uid, text, sizes, clip_b32_similarity_score."""
    rng = np.random.default_rng(seed)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(np.diff(np.linspace(0, rows, files + 1).astype(int))):
        table = pa.table(
            {
                "uid": random_hex_uids(rng, n),
                "text": pa.array(np.full(n, "a photo of something"), pa.string()),
                "original_width": rng.integers(64, 1024, n),
                "original_height": rng.integers(64, 1024, n),
                "clip_b32_similarity_score": rng.normal(0.25, 0.05, n).astype(np.float32),
            }
        )
        pq.write_table(table, root / "metadata" / f"{i:08d}.parquet")
    return root


def datacomp_style_top_fraction(pool_root: Path, column: str, fraction: float, out: Path) -> np.ndarray:
    """DataComp's clip-score baseline as their script does it: pandas read of uid + score per file, one
    global threshold, a Python loop converting hex uids to (hi, lo), sort, save."""
    frames = [pd.read_parquet(f, columns=["uid", column]) for f in sorted((pool_root / "metadata").glob("*.parquet"))]
    scores = np.concatenate([f[column].to_numpy() for f in frames])
    threshold = -np.sort(-scores)[int(len(scores) * fraction)]
    uids = [uid for f in frames for uid in f["uid"][f[column].to_numpy() >= threshold]]
    array = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], dtype=UID_DTYPE)
    array = sort_uids(array)
    np.save(out, array)
    return array


def bench_metadata_scan(rows: int = 1_000_000, fraction: float = 0.3, workers: int = 2) -> dict[str, Any]:
    cfg = {"name": "clip_score", "column": "clip_b32_similarity_score", "fraction": fraction}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm both paths on a small pool first: a scan rate should not count one-time imports.
        warm = make_metadata_pool(Path(tmp) / "warm", 10_000, files=2)
        datacomp_style_top_fraction(warm, "clip_b32_similarity_score", fraction, Path(tmp) / "warm.npy")
        run_filter(warm, cfg, Path(tmp) / "warm-out", executor=LocalExecutor(workers=1, progress=False))
        root = make_metadata_pool(Path(tmp) / "pool", rows)
        clock = time.perf_counter()
        reference = datacomp_style_top_fraction(root, "clip_b32_similarity_score", fraction, Path(tmp) / "ref.npy")
        reference_s = time.perf_counter() - clock
        clock = time.perf_counter()
        run_filter(root, cfg, Path(tmp) / "ours", executor=LocalExecutor(workers=workers, progress=False))
        ours_s = time.perf_counter() - clock
        same = np.array_equal(read_subset(Path(tmp) / "ours" / "subset.npy"), reference)
    return {
        "rows": rows,
        "reference_rows_per_s": rows / reference_s,
        "ours_rows_per_s": rows / ours_s,
        "speedup": reference_s / ours_s,
        "same_uids": bool(same),
    }


def run_benchmarks(rows: int = 1_000_000, training: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {}
    scan = bench_metadata_scan(rows)
    report["metadata_scan"] = scan
    print(
        f"metadata scan, clip_score top 30% over {rows:,} rows: ours {scan['ours_rows_per_s'] / 1e6:.2f}M rows/s, "
        f"DataComp-style reference {scan['reference_rows_per_s'] / 1e6:.2f}M rows/s "
        f"(x{scan['speedup']:.1f}), same uid set: {scan['same_uids']}  [target >= 3M rows/s]"
    )
    if training:
        report["training"] = benchmark_training_throughput()
    return report
