from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.filtering import Decision, Filter, SelectContext, from_source, register_filter
from siftbench.benchmark.core.image_hashing import hash_image_bytes, mirror_thumbnails, sha256_valid
from siftbench.benchmark.core.pool import ShardBatch, iter_tar_samples, sample_image

from .common.neighbours import hamming_join, normalised_rows

MATCH_KINDS = ("sha256", "thumbnail", "phash", "embedding")


@dataclass
class EvalIndex:
    """Fingerprints of every eval image, and which task each belongs to."""

    tasks: list[str]
    task: np.ndarray  # per eval image: index into tasks
    sha256: np.ndarray
    thumb: np.ndarray
    phash: np.ndarray
    phash_mirror: np.ndarray
    images: dict[str, int] = field(default_factory=dict)


@register_filter("eval_decontam")
@dataclass
class EvalDecontam(Filter):
    """Drop pool samples that copy an evaluation image, and count them per eval task.

    ``eval_root`` is a folder of tasks in clip_benchmark's layout (``<task>/test/{0..N-1}.tar``); every
    eval image is fingerprinted with the same functions as the pool's image-features stage, and each pool
    shard is matched against that index in ``score`` (the pool is streamed, the index stays small).
    A sample matches by identical bytes (``sha256``), by colour thumbnail within
    ``thumbnail_radius`` RMS (re-encoded, resized or flipped copies), by pHash within ``phash_radius``
    bits (off by default: on small synthetic images grey hashes collide), or by embedding cosine >=
    ``min_similarity`` (needs ``embedding`` and ``eval_embeddings``, an ``.npz`` with one array per task
    made by the same model). Drop reasons are ``eval_copy:<task>``, so the run's stats report
    contamination per task; the notes add how each copy was found.
    """

    eval_root: str | None = from_source("eval_root")
    tasks: list[str] | None = None
    sha256: bool = True
    thumbnail_radius: float | None = 8.0
    phash_radius: int | None = None
    embedding: str | None = None
    eval_embeddings: str | None = None
    min_similarity: float = 0.95

    def __post_init__(self) -> None:
        if not self.eval_root:
            raise ConfigError("eval_decontam: eval_root is not set; point it at the eval suite's folder "
                              "(the world's <world>/eval, or eval_root=... for a real pool)")  # fmt: skip
        root = Path(self.eval_root)
        if not root.is_dir():
            raise ConfigError(f"eval_decontam: eval_root {root} is not a folder; generate the world or fix the path")
        found = _task_names(root)
        if self.tasks is not None:
            missing = sorted(set(self.tasks) - set(found))
            if missing:
                raise ConfigError(f"eval_decontam: tasks {missing} not found under {root}; it has {found}")
        if not (self.tasks or found):
            raise ConfigError(f"eval_decontam: no task folders with test/*.tar under {root}")
        if (self.embedding is None) != (self.eval_embeddings is None):
            raise ConfigError("eval_decontam: embedding matching needs both embedding= and eval_embeddings=")
        if self.phash_radius is not None and not 0 <= self.phash_radius <= 16:
            raise ConfigError(f"eval_decontam: phash_radius={self.phash_radius} must be in [0, 16] bits or null")
        if not (self.sha256 or self.thumbnail_radius is not None or self.phash_radius is not None or self.embedding):
            raise ConfigError("eval_decontam: every matching method is off; enable sha256, thumbnail_radius, ...")

    def task_names(self) -> list[str]:
        return sorted(self.tasks) if self.tasks is not None else _task_names(Path(self.eval_root or ""))

    def index(self) -> EvalIndex:
        root = Path(self.eval_root or "")
        tasks = tuple(self.task_names())
        stamp = tuple((str(t), t.stat().st_mtime_ns) for name in tasks for t in _tars(root / name))
        return _build_index(str(root.resolve()), tasks, stamp)

    def embeddings(self) -> tuple[str, ...]:
        keys = ["imagehash_ok"]
        if self.sha256:
            keys.append("imagehash_sha256")
        if self.thumbnail_radius is not None:
            keys.append("imagehash_thumb")
        if self.phash_radius is not None:
            keys += ["imagehash_phash"]
        if self.embedding:
            keys.append(self.embedding)
        return tuple(keys)

    def score(self, batch: ShardBatch) -> pd.DataFrame:
        idx = self.index()
        n = len(batch)
        task = np.full(n, -1, dtype=np.int16)
        kind = np.zeros(n, dtype=np.int8)
        ok = np.asarray(batch.embeddings["imagehash_ok"]).astype(bool)

        def mark(rows: np.ndarray, eval_rows: np.ndarray, code: int) -> None:
            fresh = task[rows] < 0  # the first method that matches wins
            task[rows[fresh]] = idx.task[eval_rows[fresh]]
            kind[rows[fresh]] = code

        if self.sha256 and len(idx.task):
            words = np.asarray(batch.embeddings["imagehash_sha256"], dtype=np.uint64).reshape(n, 4)
            rows, eval_rows = _exact_lookup(words, sha256_valid(words), idx.sha256)
            mark(rows, eval_rows, 1)
        if self.thumbnail_radius is not None and len(idx.task):
            rows, eval_rows = _nearest_thumbnail(np.asarray(batch.embeddings["imagehash_thumb"]), ok, idx,
                                                 float(self.thumbnail_radius))  # fmt: skip
            mark(rows, eval_rows, 2)
        if self.phash_radius is not None and len(idx.task):
            codes = np.asarray(batch.embeddings["imagehash_phash"], dtype=np.uint64)
            targets = np.concatenate([idx.phash, idx.phash_mirror])
            q, x = hamming_join(codes, targets, int(self.phash_radius))
            usable = ok[q]
            q, x = q[usable], x[usable] % len(idx.phash)
            first = np.unique(q, return_index=True)[1]
            mark(q[first], x[first], 3)
        if self.embedding:
            rows, tasks = self._embedding_matches(batch)
            fresh = task[rows] < 0
            task[rows[fresh]] = tasks[fresh]
            kind[rows[fresh]] = 4
        return pd.DataFrame({"eval_task": task, "match": kind})

    def _embedding_matches(self, batch: ShardBatch) -> tuple[np.ndarray, np.ndarray]:
        x, valid = normalised_rows(batch.embeddings[self.embedding])
        names = self.task_names()
        stored = _load_eval_embeddings(str(Path(self.eval_embeddings or "").resolve()))
        best = np.full(len(x), -np.inf, dtype=np.float32)
        best_task = np.full(len(x), -1, dtype=np.int64)
        for t, name in enumerate(names):
            if name not in stored:
                raise ConfigError(f"eval_decontam: {self.eval_embeddings} has no array for task {name!r}; "
                                  f"it has {sorted(stored)}")  # fmt: skip
            e = stored[name]
            if e.shape[1] != x.shape[1]:
                raise ConfigError(f"eval_decontam: eval embeddings for {name!r} have dim {e.shape[1]}, pool "
                                  f"{self.embedding!r} has {x.shape[1]}; use the same model")  # fmt: skip
            sims = (x @ e.T).max(axis=1) if len(e) else np.full(len(x), -np.inf, np.float32)
            better = sims > best
            best[better], best_task[better] = sims[better], t
        rows = np.flatnonzero(valid & (best >= self.min_similarity))
        return rows, best_task[rows]

    def select(self, values: pd.DataFrame, uids: np.ndarray, ctx: SelectContext) -> Decision:
        names = self.task_names()
        task = values["eval_task"].to_numpy()
        kind = values["match"].to_numpy()
        decision = Decision.from_reasons({f"eval_copy:{name}": task == t for t, name in enumerate(names)}, len(values))
        idx = self.index()
        decision.notes = {
            "eval_images": idx.images,
            "contaminated": int((task >= 0).sum()),
            "contamination_rate": float((task >= 0).mean()) if len(task) else 0.0,
            "by_method": {m: int((kind == c).sum()) for c, m in enumerate(MATCH_KINDS, start=1) if (kind == c).any()},
        }  # fmt: skip
        return decision


def _task_names(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _tars(d)) if root.is_dir() else []


def _tars(task_dir: Path) -> list[Path]:
    tars = list((task_dir / "test").glob("*.tar"))
    return sorted(tars, key=lambda p: (int(p.stem) if p.stem.isdigit() else 1 << 62, p.name))


@cache
def _build_index(root: str, tasks: tuple[str, ...], stamp: tuple) -> EvalIndex:
    """Fingerprint every eval image once per process (cached on the tars' names and mtimes)."""
    images: list[bytes] = []
    owner: list[int] = []
    counts: dict[str, int] = {}
    for t, name in enumerate(tasks):
        before = len(images)
        for tar in _tars(Path(root) / name):
            for _, sample in iter_tar_samples(tar):
                image = sample_image(sample)
                if image is not None:
                    images.append(image[1])
                    owner.append(t)
        counts[name] = len(images) - before
    h = hash_image_bytes(images)
    ok = h["ok"].astype(bool)
    return EvalIndex(
        tasks=list(tasks), task=np.asarray(owner, dtype=np.int64)[ok], sha256=h["sha256"][ok], thumb=h["thumb"][ok],
        phash=h["phash"][ok], phash_mirror=h["phash_mirror"][ok], images=counts,
    )  # fmt: skip


@cache
def _load_eval_embeddings(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: normalised_rows(z[k])[0] for k in z.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"eval_decontam: eval_embeddings {path} unreadable ({e}); save one array per task with np.savez") from None


def _exact_lookup(words: np.ndarray, valid: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows whose digest is in ``table``, and the (first) matching table row."""
    as_void = np.dtype((np.void, 32))
    keys = np.ascontiguousarray(table).view(as_void).ravel()
    order = np.argsort(keys, kind="stable")
    wanted = np.ascontiguousarray(words).view(as_void).ravel()
    pos = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
    hit = valid & (keys[order][pos] == wanted)
    rows = np.flatnonzero(hit)
    return rows, order[pos[rows]]


def _nearest_thumbnail(thumbs: np.ndarray, ok: np.ndarray, idx: EvalIndex, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows whose thumbnail is within ``radius`` RMS of an eval thumbnail or its mirror image."""
    import faiss

    targets = np.concatenate([idx.thumb, mirror_thumbnails(idx.thumb)]).astype(np.float32)
    index = faiss.IndexFlatL2(targets.shape[1])
    index.add(targets)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return rows, rows
    d, i = index.search(np.ascontiguousarray(thumbs[rows], dtype=np.float32), 1)
    close = d[:, 0] <= radius * radius * targets.shape[1]
    return rows[close], i[close, 0] % len(idx.thumb)
