"""`siftbench bench --filters`: the filter library's speed and quality figures, each beside its target.

Every measurement runs in its own subprocess, so its peak RSS (``resource.getrusage``) is its own and
not what an earlier measurement left behind. Each figure is printed with its target and, where there is
one, a reference measured in the same run on the same machine:

- semantic dedup on N (default 1M) 512-d float16 embeddings drawn around cluster centres, with planted
  near-duplicate pairs (cosine above 1 - eps) and decoy pairs just below it: recall of planted pairs,
  wrongly removed rows, wall time, peak RSS; and on a 100k set, precision and recall against exact
  brute-force pairwise search (same keep order), with the time ratio;
- caption concept matching (Aho-Corasick, space-padded) against a 10k-entry vocabulary: captions/s/core;
- a global top-30% CLIP-score threshold over a 12.8M-row pool in 16 parquet files: same uid set as
  DataComp's rule, rows/s against DataComp's way of doing it, peak RSS.

``python -m siftbench.benchmark.perf.bench_filters dedup-recall [world]`` measures the dedup pipeline
(configs/filter/dedup.yaml) on an embedded world against its ground truth: recall per planted
near-duplicate variant and false removals of clean samples (see ``duplicate_recall``).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.uids import read_subset, uids_to_hex
from siftbench.benchmark.perf.bench import datacomp_style_top_fraction, make_metadata_pool
from siftbench.benchmark.perf.fresh_process import peak_rss_gb, run_in_fresh_process
from siftbench.benchmark.stages.image_features import compute_image_features
from siftbench.benchmark.stages.select import run_filter
from siftbench.benchmark.world import ensure_world
from siftbench.filters.common.concepts import ConceptMatcher
from siftbench.filters.common.neighbours import greedy_drop, normalised_rows
from siftbench.filters.semantic_dedup import semantic_dedup

EPS = 0.05


# -- data ---------------------------------------------------------------------------------------------


def make_clustered_embeddings(
    path: Path,
    n: int,
    dim: int = 512,
    *,
    eps: float = EPS,
    centres: int | None = None,
    pair_fraction: float = 0.02,
    decoy_fraction: float = 0.02,
    block: int = 100_000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write an (n, dim) float16 ``.npy`` of unit vectors around random centres; return the planted truth.

    Each row is ``a * centre + sqrt(1 - a^2) * noise`` (a in [0.5, 0.8], so rows of one centre have
    cosine ~0.25-0.65). Then ``pair_fraction * n`` rows are replaced by near copies of another row of the
    same ``block`` (cosine in [1 - 0.9 eps, 1 - 0.1 eps]: duplicates) and ``decoy_fraction * n`` rows by
    copies just below the threshold (cosine in [1 - eps - 0.01, 1 - eps - 0.001]: not duplicates).
    Written in chunks, so memory stays at one chunk whatever n.
    """
    rng = np.random.default_rng(seed)
    centres = centres or max(1, n // 1000)
    centre_vecs = _unit(rng.standard_normal((centres, dim), dtype=np.float32))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        which = rng.integers(0, centres, m)
        a = rng.uniform(0.5, 0.8, m).astype(np.float32)[:, None]
        noise = _unit(rng.standard_normal((m, dim), dtype=np.float32))
        out[s : s + m] = _unit(a * centre_vecs[which] + np.sqrt(1 - a * a) * noise)
    # Sources and targets are disjoint rows, each pair inside one block of rows.
    n_pairs, n_decoys = int(n * pair_fraction), int(n * decoy_fraction)
    picks = _pairs_within_blocks(rng, n, n_pairs + n_decoys, block)
    pair_src, pair_dst = picks[:n_pairs, 0], picks[:n_pairs, 1]
    decoy_src, decoy_dst = picks[n_pairs:, 0], picks[n_pairs:, 1]
    thr = 1.0 - eps
    for src, dst, low, high in ((pair_src, pair_dst, 1 - 0.9 * eps, 1 - 0.1 * eps),
                                (decoy_src, decoy_dst, thr - 0.01, thr - 0.001)):  # fmt: skip
        for s in range(0, len(src), 65536):
            x = np.asarray(out[np.sort(src[s : s + 65536])], dtype=np.float32)
            order = np.argsort(np.argsort(src[s : s + 65536]))
            x = _unit(x[order])
            cos = rng.uniform(low, high, len(x)).astype(np.float32)[:, None]
            u = rng.standard_normal(x.shape, dtype=np.float32)
            u = _unit(u - (u * x).sum(1, keepdims=True) * x)  # orthogonal to x
            y = cos * x + np.sqrt(1 - cos * cos) * u
            out[dst[s : s + 65536]] = y.astype(np.float16)
    out.flush()
    del out
    return {"pair_src": pair_src, "pair_dst": pair_dst, "decoy_src": decoy_src, "decoy_dst": decoy_dst}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs_within_blocks(rng: np.random.Generator, n: int, count: int, block: int) -> np.ndarray:
    """``count`` (source, target) rows, all distinct, each pair inside the same block of ``block`` rows."""
    per_block = -(-count // -(-n // block))
    rows = []
    for start in range(0, n, block):
        size = min(block, n - start)
        k = min(per_block, size // 2, count - len(rows))
        if k <= 0:
            break
        rows.extend((start + rng.choice(size, size=2 * k, replace=False)).reshape(k, 2).tolist())
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


# -- measurements (each runs in a subprocess: `python -m siftbench.benchmark.perf.bench_filters NAME JSON`) ----


def measure_semdedup(path: str, truth: str, eps: float = EPS, n_clusters: int | None = None,
                     margin: float = 0.02) -> dict[str, Any]:  # fmt: skip

    vectors = np.load(path, mmap_mode="r")
    t = np.load(truth)
    clock = time.perf_counter()
    result = semantic_dedup(vectors, eps=eps, n_clusters=n_clusters, margin=margin)
    seconds = time.perf_counter() - clock
    removed = ~result.keep
    caught = removed[t["pair_src"]] | removed[t["pair_dst"]]
    planted = np.zeros(len(removed), dtype=bool)
    planted[t["pair_src"]] = planted[t["pair_dst"]] = True
    return {
        "rows": len(removed),
        "seconds": seconds,
        "recall": float(caught.mean()),
        "wrongly_removed": float(removed[~planted].mean()),
        "decoys_removed": float((removed[t["decoy_src"]] | removed[t["decoy_dst"]]).mean()),
        "stats": result.stats,
    }


def measure_semdedup_vs_brute_force(path: str, eps: float = EPS, n_clusters: int | None = None,
                                    margin: float = 0.02) -> dict[str, Any]:  # fmt: skip

    vectors = np.load(path, mmap_mode="r")
    n = len(vectors)
    clock = time.perf_counter()
    ours = ~semantic_dedup(vectors, eps=eps, n_clusters=n_clusters, margin=margin).keep
    ours_s = time.perf_counter() - clock
    clock = time.perf_counter()
    x = normalised_rows(np.asarray(vectors, dtype=np.float32))[0]
    found_i, found_j = [], []
    for s in range(0, n, 2048):
        a, b = np.nonzero(x[s : s + 2048] @ x[s:].T > 1.0 - eps)
        a, b = a + s, b + s
        upper = a < b
        found_i.append(a[upper])
        found_j.append(b[upper])
    exact = greedy_drop(np.arange(n), np.concatenate(found_i), np.concatenate(found_j))
    brute_s = time.perf_counter() - clock
    both = int((ours & exact).sum())
    return {
        "rows": n,
        "ours_seconds": ours_s,
        "brute_force_seconds": brute_s,
        "precision": both / max(int(ours.sum()), 1),
        "recall": both / max(int(exact.sum()), 1),
        "removed": int(ours.sum()),
        "removed_brute_force": int(exact.sum()),
    }


def make_vocabulary_and_captions(n_entries: int, n_captions: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A vocabulary of pseudo-words (a fifth of them two words long) and web-like captions that name
    0-3 entries among filler words, with case and punctuation noise."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def words(k: int) -> list[str]:
        lengths = rng.integers(3, 10, k)
        return ["".join(rng.choice(letters, size=n)) for n in lengths]

    vocabulary = list(dict.fromkeys(words(n_entries * 2)))[:n_entries]
    for i in range(0, len(vocabulary), 5):
        vocabulary[i] = f"{vocabulary[i]} {vocabulary[(i + 1) % len(vocabulary)]}"
    vocabulary = list(dict.fromkeys(vocabulary))
    filler = words(2000)
    captions = []
    for _ in range(n_captions):
        parts = list(rng.choice(filler, size=int(rng.integers(5, 12))))
        for _ in range(int(rng.integers(0, 4))):
            parts.insert(int(rng.integers(0, len(parts) + 1)), vocabulary[int(rng.integers(len(vocabulary)))])
        text = " ".join(parts)
        captions.append(text.capitalize() + rng.choice([".", "!", "", " #sale"]))
    return vocabulary, captions


def measure_concept_matching(entries: int = 10_000, captions: int = 200_000) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits  # heavy, optional (siftbench[ml])


    vocabulary, texts = make_vocabulary_and_captions(entries, captions)
    array = np.array(texts, dtype=object)
    matcher = ConceptMatcher(vocabulary, "bench")
    matcher.match(array[:1000])  # build the automaton outside the clock
    with threadpool_limits(1):
        clock = time.perf_counter()
        rows, _ = matcher.match(array)
        ours = time.perf_counter() - clock
    # Reference: the same matcher fed one caption at a time, as a per-caption filter would call it.
    one_by_one = ConceptMatcher(list(matcher.entries), "bench")
    sample = texts[:20_000]
    one_by_one.match(sample[:1])
    clock = time.perf_counter()
    reference_matches = sum(len(one_by_one.match([t])[0]) for t in sample)
    reference = time.perf_counter() - clock
    ours_sample = int((rows < len(sample)).sum())
    return {
        "entries": len(vocabulary),
        "captions": len(texts),
        "captions_per_s": len(texts) / ours,
        "reference_captions_per_s": len(sample) / reference,
        "same_matches_on_sample": ours_sample == reference_matches,
        "matches_per_caption": len(rows) / len(texts),
    }


def make_scan_pool(root: str, rows: int, files: int = 16) -> dict[str, Any]:
    make_metadata_pool(Path(root), rows, files=files)
    return {"rows": rows}


def measure_scan_reference(root: str, out: str, fraction: float = 0.3) -> dict[str, Any]:
    clock = time.perf_counter()
    datacomp_style_top_fraction(Path(root), "clip_b32_similarity_score", fraction, Path(out))
    return {"seconds": time.perf_counter() - clock}


def measure_scan_ours(root: str, out: str, fraction: float = 0.3, workers: int = 2) -> dict[str, Any]:
    cfg = {"name": "clip_score", "column": "clip_b32_similarity_score", "fraction": fraction}
    clock = time.perf_counter()
    run_filter(Path(root), cfg, Path(out), executor=LocalExecutor(workers=workers, progress=False))
    return {"seconds": time.perf_counter() - clock}


def measure_make_embeddings(path: str, truth: str, n: int) -> dict[str, Any]:
    clock = time.perf_counter()
    planted = make_clustered_embeddings(Path(path), n)
    np.savez(truth, **planted)
    return {"seconds": time.perf_counter() - clock}


# -- dedup quality on the embedded world ----------------------------------------------------------------


def duplicate_recall(truth: Any, kept_uids: set[str]) -> dict[str, Any]:
    """Recall per duplicate variant and the false-removal rate, from a world's ground truth.

    A planted copy is caught when it or its source left the subset: dedup keeps one member of a group,
    and which one is the keep order's choice (by uid), not a miss. A clean sample that is the source
    of a copy is therefore not a false removal; every other clean sample removed is.
    """
    gone = ~truth["uid"].isin(kept_uids).to_numpy()
    by_uid = dict(zip(truth["uid"], gone, strict=True))
    copies = truth[truth["defect"].isin(["exact_duplicate", "near_duplicate"])]
    variant = np.where(copies["defect"] == "exact_duplicate", "exact", copies["variant"].astype(str))
    recall: dict[str, float] = {}
    planted: dict[str, int] = {}
    for v in sorted(set(variant)):
        rows = copies[variant == v]
        caught = [by_uid[u] or by_uid.get(s, False) for u, s in zip(rows["uid"], rows["source_uid"], strict=True)]
        recall[v], planted[v] = float(np.mean(caught)), len(rows)
    clean = (truth["defect"] == "clean") & ~truth["uid"].isin(set(copies["source_uid"]))
    return {"recall": recall, "planted": planted, "clean": int(clean.sum()),
            "false_removals": int(gone[clean.to_numpy()].sum()),
            "false_removal_rate": float(gone[clean.to_numpy()].mean()) if clean.any() else 0.0}  # fmt: skip


def measure_world_dedup(world: str = "default", out: str | None = None, filter_name: str = "dedup") -> dict[str, Any]:
    """Image features, then the ``configs/filter/<filter_name>.yaml`` pipeline on the world's pool."""
    w = ensure_world(world, progress=False)
    compute_image_features(w.pool_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(files("siftbench.configs") / "filter" / f"{filter_name}.yaml"))
    work = Path(out or tempfile.mkdtemp(prefix="siftbench-dedup-"))
    try:
        clock = time.perf_counter()
        stats = run_filter(w.pool_dir, cfg, work)
        seconds = time.perf_counter() - clock
        kept = set(uids_to_hex(read_subset(work / "subset.npy")))
    finally:
        if out is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"world": str(w.root), "pool_size": stats["pool_size"], "seconds": seconds, "filter": cfg,
            "steps": [{"step": s["step"], "dropped": s["dropped"]} for s in stats["steps"]],
            **duplicate_recall(w.ground_truth(), kept)}  # fmt: skip


def print_dedup_recall(r: dict[str, Any]) -> None:
    print(f"dedup on {r['world']} ({r['pool_size']:,} samples, {r['seconds']:.0f} s)")
    print("| variant | planted | recall |\n|---|---|---|")
    for v, rec in r["recall"].items():
        print(f"| {v} | {r['planted'][v]} | {rec:.3f} |")
    print(f"false removals: {r['false_removals']} of {r['clean']:,} clean samples ({r['false_removal_rate']:.2%}) "
          "[targets: recall >= 0.9 per variant, false removals <= 0.5%]")


MEASUREMENTS = {
    "semdedup": measure_semdedup,
    "semdedup_vs_brute_force": measure_semdedup_vs_brute_force,
    "concept_matching": measure_concept_matching,
    "make_scan_pool": make_scan_pool,
    "scan_reference": measure_scan_reference,
    "scan_ours": measure_scan_ours,
    "make_embeddings": measure_make_embeddings,
    "world_dedup": measure_world_dedup,
}


def run_measurement(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; add its peak RSS (its own and its worker processes')."""
    return run_in_fresh_process("siftbench.benchmark.perf.bench_filters", name, **kwargs)


def _child_main(name: str, raw: str) -> None:
    result = MEASUREMENTS[name](**json.loads(raw))
    result["peak_rss_gb"] = max(peak_rss_gb())
    print(json.dumps(result, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dict__"):
        return value.__dict__
    raise TypeError(type(value).__name__)


def run_filter_benchmarks(
    semdedup_rows: int = 1_000_000,
    brute_force_rows: int = 100_000,
    scan_rows: int = 12_800_000,
    entries: int = 10_000,
    captions: int = 200_000,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run every measurement (each in its own subprocess) and print one line per figure with its target."""
    report: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="siftbench-bench-", dir=workdir))
    say = print
    try:
        emb, truth = base / f"emb{semdedup_rows}.npy", base / f"truth{semdedup_rows}.npz"
        run_measurement("make_embeddings", path=str(emb), truth=str(truth), n=semdedup_rows)
        sd = run_measurement("semdedup", path=str(emb), truth=str(truth))
        report["semdedup"] = sd
        say(f"semantic dedup, {sd['rows']:,} x 512 float16 (eps {EPS}): recall of planted pairs {sd['recall']:.4f} "
            f"[target >= 0.95], wrongly removed {sd['wrongly_removed']:.4%} [target <= 1%], decoys removed "
            f"{sd['decoys_removed']:.4%}, {sd['seconds']:.1f} s, peak RSS {sd['peak_rss_gb']:.2f} GB [target <= 6 GB]")
        stage = sd["stats"]["seconds"]
        say("    " + ", ".join(f"{k} {v:.1f} s" for k, v in stage.items()) +
            f"; {sd['stats']['clusters']} clusters (largest {sd['stats']['largest_cluster']:,}), "
            f"{sd['stats']['boundary_rows']:,} boundary rows")  # fmt: skip
        emb.unlink()
        small, small_truth = base / f"emb{brute_force_rows}.npy", base / f"truth{brute_force_rows}.npz"
        run_measurement("make_embeddings", path=str(small), truth=str(small_truth), n=brute_force_rows)
        bf = run_measurement("semdedup_vs_brute_force", path=str(small))
        report["semdedup_vs_brute_force"] = bf
        say(f"semantic dedup vs exact brute-force pairwise search, {bf['rows']:,} rows: precision {bf['precision']:.4f}, "
            f"recall {bf['recall']:.4f} [targets >= 0.99]; ours {bf['ours_seconds']:.1f} s, brute force "
            f"{bf['brute_force_seconds']:.1f} s (x{bf['brute_force_seconds'] / bf['ours_seconds']:.1f} faster)")
        small.unlink()

        cm = run_measurement("concept_matching", entries=entries, captions=captions)
        report["concept_matching"] = cm
        say(f"caption concept matching, {cm['entries']:,}-entry vocabulary: {cm['captions_per_s'] / 1e3:,.0f}k "
            f"captions/s on one core [target >= 200k/s/core]; one caption at a time (concept_match): "
            f"{cm['reference_captions_per_s'] / 1e3:,.0f}k/s; same matches: {cm['same_matches_on_sample']}")

        pool, ref_out, ours_out = base / "scan-pool", base / "reference.npy", base / "ours"
        run_measurement("make_scan_pool", root=str(pool), rows=scan_rows)
        ref = run_measurement("scan_reference", root=str(pool), out=str(ref_out))
        ours = run_measurement("scan_ours", root=str(pool), out=str(ours_out))

        same = bool(np.array_equal(np.load(ref_out, allow_pickle=False), read_subset(ours_out / "subset.npy")))
        report["scan"] = {"reference": ref, "ours": ours, "same_uids": same}
        say(f"global CLIP-score top 30%, {scan_rows:,} rows in 16 parquet files: ours {scan_rows / ours['seconds'] / 1e6:.2f}M "
            f"rows/s, peak RSS {ours['peak_rss_gb']:.2f} GB [target <= 1 GB]; DataComp-style "
            f"{scan_rows / ref['seconds'] / 1e6:.2f}M rows/s, {ref['peak_rss_gb']:.2f} GB "
            f"(x{ref['seconds'] / ours['seconds']:.1f}) [target >= x2]; same uid set: {same}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return report


if __name__ == "__main__":
    if sys.argv[1] == "dedup-recall":
        print_dedup_recall(measure_world_dedup(*(sys.argv[2:3] or ["default"])))
    else:
        _child_main(sys.argv[1], sys.argv[2])
