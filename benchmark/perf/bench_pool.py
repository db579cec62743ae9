"""`siftbench bench --only embed,scaling`: the embed stage's data path and the pool stages' cost growth.

- embed: pairs/s through the whole stage (read tars, decode, preprocess, model, write npz) beside the
  model's own pairs/s on in-memory tensors of the same batch, measured in the same process just before;
- scaling: score + select (clip_score's global top fraction, reading the similarity column of our
  embeddings npz) over N and 5N synthetic rows, each in a fresh subprocess for its own peak RSS: time
  should grow linearly (ratio 4-6) and memory barely (<= 1.2x), because shards are streamed.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.uids import hex_to_uids
from siftbench.benchmark.perf.bench import random_hex_uids, run_benchmarks
from siftbench.benchmark.perf.bench_filters import run_filter_benchmarks
from siftbench.benchmark.perf.embed_throughput import benchmark_embed_throughput
from siftbench.benchmark.perf.fresh_process import peak_rss_gb, run_in_fresh_process
from siftbench.benchmark.stages.select import run_filter
from siftbench.benchmark.stages.train import benchmark_training_throughput

SECTIONS = ("scan", "training", "filters", "embed", "scaling")


# -- data ---------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40),
           "purple": (140, 50, 200), "orange": (240, 140, 30)}
SHAPES = ("square", "circle", "triangle", "cross")


def make_image_pool(root: Path, shards: int = 4, per_shard: int = 2000, size: int = 32, seed: int = 0) -> Path:
    """A DataComp-layout pool of ``size`` px PNGs (a coloured shape on a noisy background) with captions."""
    from PIL import Image, ImageDraw  # heavy, optional (siftbench[ml])

    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for s in range(shards):
        uids = random_hex_uids(rng, per_shard).to_pylist()
        texts = []
        with tarfile.open(root / "shards" / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j, uid in enumerate(uids):
                background = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                image = Image.fromarray(background)
                colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
                x, y = (int(v) for v in rng.integers(0, size // 2, 2))
                box = (x, y, x + size // 2, y + size // 2)
                draw = ImageDraw.Draw(image)
                (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                text = f"a {colour} {shape} on a dark background, photo {j}"
                texts.append(text)
                key = f"{s * 10_000 + j:08d}"
                for ext, data in (("png", buffer.getvalue()), ("txt", text.encode()),
                                  ("json", json.dumps({"uid": uid, "key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.table({"uid": uids, "text": texts}), root / "metadata" / f"{s:08d}.parquet")
    return root


def make_embedded_pool(root: str, rows: int, shard_rows: int = 100_000, dim: int = 64, key: str = "bench",
                       seed: int = 0) -> dict[str, Any]:
    """Metadata parquet (uid, text) plus ``embeddings/<key>/*.npz`` exactly as ``siftbench embed`` writes
    them (uid, float16 unit image/text features, float32 similarity), ``shard_rows`` rows per shard."""
    rng = np.random.default_rng(seed)
    base = Path(root)
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    out = base / "embeddings" / key
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    for s, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        uids = random_hex_uids(rng, n)
        pq.write_table(pa.table({"uid": uids, "text": pa.array(np.full(n, "a photo"), pa.string())}),
                       base / "metadata" / f"{s:08d}.parquet")
        image = rng.standard_normal((n, dim), dtype=np.float32)
        text = image + rng.standard_normal((n, dim), dtype=np.float32)
        image /= np.linalg.norm(image, axis=1, keepdims=True)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        np.savez(out / f"{s:08d}.npz", uid=hex_to_uids(uids), image=image.astype(np.float16),
                 text=text.astype(np.float16), similarity=(image * text).sum(axis=1, dtype=np.float32))
    return {"seconds": time.perf_counter() - clock}


# -- measurements -------------------------------------------------------------------------------------


def measure_score_select(root: str, out: str, fraction: float = 0.3, workers: int = 2,
                         key: str = "bench") -> dict[str, Any]:
    cfg = {"name": "clip_score", "column": f"clip_{key}_similarity_score", "fraction": fraction}
    # Warm up on a small pool first: the growth of the cost with N should not include one-time imports.
    warm = Path(out).parent / f"{Path(out).name}-warm"
    make_embedded_pool(str(warm / "pool"), 20_000, shard_rows=10_000, key=key)
    run_filter(warm / "pool", cfg, warm / "out", executor=LocalExecutor(workers=workers, progress=False))
    shutil.rmtree(warm)
    clock = time.perf_counter()
    stats = run_filter(Path(root), cfg, Path(out), executor=LocalExecutor(workers=workers, progress=False))
    return {"seconds": time.perf_counter() - clock, "kept": stats["kept"], "pool_size": stats["pool_size"],
            "stage_seconds": stats["seconds"]}


MEASUREMENTS = {"make_embedded_pool": make_embedded_pool, "score_select": measure_score_select}


def run_measurement(name: str, **kwargs: Any) -> dict[str, Any]:
    """One measurement in a fresh interpreter, with its peak RSS (its own, and its largest worker's)."""
    return run_in_fresh_process("siftbench.benchmark.perf.bench_pool", name, **kwargs)


def _child_main(name: str, raw: str) -> None:
    result = MEASUREMENTS[name](**json.loads(raw))
    result["peak_rss_gb"], result["peak_worker_rss_gb"] = peak_rss_gb()
    print(json.dumps(result))


# -- the sections ---------------------------------------------------------------------------------------


def bench_embed(pairs: int = 8000, batch_size: int = 256, num_workers: int = 0, arch: str = "siftbench-tiny",
                size: int = 32, workdir: str | Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="siftbench-embed-bench-", dir=workdir))
    try:
        shards = 4
        pool = make_image_pool(base / "pool", shards=shards, per_shard=pairs // shards, size=size)
        report = benchmark_embed_throughput(pool, arch, batch_size=batch_size, num_workers=num_workers)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"embed stage, {arch} ({size} px, batch {batch_size}, {report['torch_threads']} torch threads, "
          f"{num_workers} decode worker): {report['stage_pairs_per_s']:,.0f} pairs/s through the stage (read, decode, "
          f"preprocess, model, write) vs {report['in_memory_pairs_per_s']:,.0f} pairs/s for the model on in-memory "
          f"tensors (the pool's own batches), alternating over {report['rounds']} rounds: ratio {report['ratio']:.2f} "
          f"(per round {', '.join(f'{r:.2f}' for r in report['ratio_per_round'])})  [target >= 0.85]")
    return report


def bench_scaling(rows: int = 1_000_000, factor: int = 5, workdir: str | Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="siftbench-scaling-bench-", dir=workdir))
    results = {}
    try:
        for n in (rows, rows * factor):
            pool = base / f"pool{n}"
            run_measurement("make_embedded_pool", root=str(pool), rows=n)
            results[n] = run_measurement("score_select", root=str(pool), out=str(base / f"out{n}"))
            assert results[n]["pool_size"] == n
            shutil.rmtree(pool)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    small, large = results[rows], results[rows * factor]
    time_ratio = large["seconds"] / small["seconds"]
    rss = {n: max(r["peak_rss_gb"], r["peak_worker_rss_gb"]) for n, r in results.items()}
    rss_ratio = rss[rows * factor] / rss[rows]
    print(f"score + select (clip_score top 30% from embeddings npz, 100k rows/shard, 2 workers): "
          f"{rows / 1e6:g}M rows {small['seconds']:.1f} s, peak RSS {rss[rows]:.2f} GB; "
          f"{rows * factor / 1e6:g}M rows {large['seconds']:.1f} s, peak RSS {rss[rows * factor]:.2f} GB; "
          f"time x{time_ratio:.2f} [target 4-6], RSS x{rss_ratio:.2f} [target <= 1.2]")
    return {"results": results, "time_ratio": time_ratio, "rss_ratio": rss_ratio}


def run_sections(names: list[str], rows: int = 1_000_000) -> dict[str, Any]:
    """Run the named sections of `siftbench bench` (scan, training, filters, embed, scaling)."""
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ConfigError(f"bench --only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    report: dict[str, Any] = {}
    if "scan" in names or "training" in names:
        if "scan" in names:
            report.update(run_benchmarks(rows=rows, training="training" in names))
        else:
            report["training"] = benchmark_training_throughput()
    if "filters" in names:
        report["filters"] = run_filter_benchmarks()
    if "embed" in names:
        report["embed"] = bench_embed()
    if "scaling" in names:
        report["scaling"] = bench_scaling(rows)
    return report


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
