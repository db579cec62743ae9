"""embed: pool tars -> ``embeddings/<model_key>/<shard>.npz``, the input of CLIP-score and embedding filters.

    embeddings/<model_key>/
      <shard>.npz          uid (u8,u8), image (N, D) float16, text (N, D) float16, similarity (N,) float32
      stats/<shard>.json   what happened to that shard's samples (counts per reason, time)
      stats.json           the totals, rewritten at the end of every call
      stage.json           which weights made these embeddings (a resume with other weights is refused)

Features are L2-normalised fp32 model outputs stored as float16; ``similarity`` is the cosine of the
fp32 features (DataComp's ``clip_*_similarity_score``). Rows follow the tar's order and carry their
uids: the Pool reader joins them to the metadata by uid, whatever the metadata files are called or how
they are cut (one per tar, one for many tars, several for one). Every tar sample with a uid gets a row;
one whose image cannot be decoded gets NaN image features and a NaN similarity (filters drop NaN scores
and count them), and a metadata uid that no tar holds (failed download, damaged tar) reads as NaN. A
damaged tar is read on from the next valid header (core.tars) and counted. Each npz appears atomically
after its stats, so it is the shard's completion marker: a rerun skips finished shards. At the end,
``stats.json`` says how the embeddings join the metadata (``join``: metadata rows with and without an
embedding, tar samples whose uid the metadata lacks, repeated tar uids).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from string import hexdigits
from typing import Any, Literal

import numpy as np

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError, StageError
from siftbench.benchmark.core.executors import map_with_state
from siftbench.benchmark.core.pool import Pool
from siftbench.benchmark.core.progress import progress_bar
from siftbench.benchmark.core.stage import fingerprint, stage_folder
from siftbench.benchmark.core.uids import file_sha256, hex_to_uids
from siftbench.benchmark.stages.embed.preprocess import AsciiFastTokenizer, BatchPreprocess, _decode_shard
from siftbench.benchmark.stages.models import load_model
from siftbench.benchmark.stages.train import torch_threads, usable_cores

_HEX = frozenset(hexdigits)
STAGE_VERSION = 1  # bump whenever the embeddings change for the same weights and pool


@dataclass(frozen=True)
class EmbedModel:
    """The weights to embed with; enough to rebuild the model in a worker process."""

    arch: str
    checkpoint: str | None = None
    pretrained: str | None = None
    device: str = "cpu"

    def identity(self) -> dict[str, Any]:
        checkpoint_hash = file_sha256(self.checkpoint) if self.checkpoint else None
        return {"arch": self.arch, "pretrained": self.pretrained, "checkpoint_sha256": checkpoint_hash,
                "checkpoint": self.checkpoint}

    def resolved_device(self) -> str:
        """``auto``: the GPU when this process sees one (a Ray GPU actor, a GPU box), else the CPU."""
        if self.device != "auto":
            return self.device
        import torch  # heavy, optional (siftbench[ml])

        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self) -> tuple[Any, Callable, Callable]:
        return load_model(self.arch, checkpoint=self.checkpoint, pretrained=self.pretrained,
                          device=self.resolved_device())


# What a restart clears: the embeddings, their stats and join index, and older siftbench's markers.
RESTARTED = ("*.npz", "stats", "stats.json", "join", "model.json", "scorer.json")


def embed_pool(
    pool_root: str | Path,
    arch: str,
    model_key: str,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    executor: Any = None,
    progress: bool = True,
    num_workers: int = 0,
    out_dir: str | Path | None = None,
    on_change: Literal["refuse", "restart"] = "refuse",
) -> dict[str, Any]:
    """Embed every tar of ``pool_root/shards`` not embedded yet; return (and write) the stats.

    A folder holding embeddings of other weights (or that no stage.json describes) is refused; with
    ``on_change="restart"``, for caches the caller owns, it is emptied and embedded anew.

    ``executor`` maps shards over workers that load the model once each (Ray actors, with a GPU each
    when the cluster has GPUs); without one, shards run here and ``num_workers`` DataLoader workers read,
    decode and preprocess while the model runs. ``device`` may be ``auto`` (GPU when there is one).
    ``out_dir`` defaults to ``pool_root/embeddings/<model_key>``.
    """
    pool_root = Path(pool_root)
    tars = sorted((pool_root / "shards").glob("*.tar"))
    if not tars:
        raise PoolError(f"pool {pool_root}: no shards/*.tar to embed; a pool's images live in shards/<NNNNNNNN>.tar")
    out = Path(out_dir) if out_dir is not None else pool_root / "embeddings" / model_key
    spec = EmbedModel(arch, None if checkpoint is None else str(checkpoint), pretrained, device)
    identity = spec.identity()
    # The weights, not where the checkpoint file sits: a moved checkpoint still resumes.
    weights = {k: identity[k] for k in ("arch", "pretrained", "checkpoint_sha256")}
    with stage_folder(out, fingerprint("embed", STAGE_VERSION, weights), on_change=on_change, what="embeddings",
                      outputs=RESTARTED, fix="use another model key or delete that folder",
                      check_unclaimed=_no_foreign_embeddings):
        todo = [t for t in tars if not (out / f"{t.stem}.npz").exists()]
        start = time.perf_counter()
        if todo and executor is None:
            embed_tars(spec.load(), todo, out, batch_size=batch_size, device=spec.resolved_device(),
                       num_workers=num_workers, progress=progress, done_before=len(tars) - len(todo))
        elif todo:
            job = partial(_embed_tar_job, spec, out, batch_size)
            map_with_state(executor, spec.load, job, todo, desc=f"embed {model_key}")
        stats = _collect_stats(out, tars)
        seconds = time.perf_counter() - start
        stats.update(model_key=model_key, model=identity, shards_embedded_now=len(todo),
                     seconds_now=round(seconds, 3))
        if out == pool_root / "embeddings" / model_key and any((pool_root / "metadata").glob("*.parquet")):
            stats["join"] = Pool.open(pool_root).join(model_key).counts
        write_json(out / "stats.json", stats)
    return stats


def embed_tars(
    bundle: tuple[Any, Callable, Callable],
    tars: Sequence[Path],
    out: Path,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    done_before: int = 0,
) -> None:
    """Embed these tars with an already loaded (model, preprocess, tokenizer) into ``out``."""
    import torch  # heavy, optional (siftbench[ml])
    from torch.utils.data import DataLoader  # torch: heavy, optional
    model, preprocess, tokenizer = bundle
    tokenizer = AsciiFastTokenizer.wrap(tokenizer)
    model = model.to(device).eval()
    with torch.no_grad():
        dim = model.encode_text(tokenizer([""]).to(device)).shape[-1]
    # On a GPU the workers hand over uint8 pixels and the GPU normalises them: a quarter of the bytes to
    # copy between processes and to the device, and no float passes on the workers' cores.
    on_gpu = torch.device(device).type == "cuda"
    batcher = BatchPreprocess(preprocess, normalize_later=on_gpu)
    source = _shard_batches(list(tars), preprocess, tokenizer, batch_size, normalize_later=on_gpu)
    # fork: the dataset class is made at call time (torch is imported lazily), so it cannot be pickled
    stream = DataLoader(source, batch_size=None, num_workers=min(num_workers, len(tars)), pin_memory=on_gpu,
                        multiprocessing_context="fork") if num_workers > 0 else source
    pending: dict[int, _Shard] = {}
    # Beside a GPU torch only launches kernels here, so it takes a few threads and leaves the cores to the workers.
    threads = torch_threads(device, 1) if on_gpu and num_workers > 0 else torch.get_num_threads()
    with _intra_op_threads(threads), torch.no_grad(), progress_bar(
        enabled=progress, total=done_before + len(tars), initial=done_before, desc="embed", unit="shard"
    ) as bar:
        for item in stream:
            shard = pending.setdefault(item[1], _Shard(tars[item[1]], dim))
            if item[0] == "batch":
                clock = time.perf_counter()
                shard.add(*_encode(model, device, dim, batcher, *item[2:]))
                shard.model_seconds += time.perf_counter() - clock
            else:
                shard.finish(out, counts=Counter(item[2]), damage=item[3])
                del pending[item[1]]
                bar.update(1)


@contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, and set back after it."""
    import torch  # heavy, optional (siftbench[ml])

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Shard:
    """Rows of one shard as its batches come back from the model."""

    def __init__(self, tar: Path, dim: int):
        self.tar, self.dim = tar, dim
        self.uids: list[str] = []
        self.image: list[Any] = []
        self.text: list[Any] = []
        self.started = time.perf_counter()
        self.model_seconds = 0.0

    def add(self, uids: list[str], image: Any, text: Any) -> None:
        self.uids += uids
        self.image.append(image)
        self.text.append(text)

    def finish(self, out: Path, counts: Counter, damage: dict[str, Any] | None) -> None:
        import torch  # heavy, optional (siftbench[ml])

        image = torch.cat(self.image).numpy() if self.image else np.zeros((0, self.dim), np.float32)
        text = torch.cat(self.text).numpy() if self.text else np.zeros((0, self.dim), np.float32)
        uids = hex_to_uids(self.uids)
        similarity = (image * text).sum(axis=1, dtype=np.float32)  # cosine of unit fp32 vectors; NaN stays NaN
        rows = len(uids)
        embedded = int(np.isfinite(similarity).sum())
        write_json(out / "stats" / f"{self.tar.stem}.json", {
            "samples": counts.pop("samples", 0), "rows": rows, "embedded": embedded,
            "reasons": dict(counts), "damaged": bool(counts.get("damaged_tar")), "damage": damage,
            "seconds": round(time.perf_counter() - self.started, 3), "model_seconds": round(self.model_seconds, 3),
        })
        with atomic_path(out / f"{self.tar.stem}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, uid=uids, image=image.astype(np.float16), text=text.astype(np.float16),
                     similarity=similarity)


def _encode(model: Any, device: str, dim: int, batcher: BatchPreprocess, uids: list[str], images: Any,
            image_rows: list[int], tokens: Any, text_rows: list[int]) -> tuple[list[str], Any, Any]:
    """Unit fp32 features on CPU for one batch; rows without an image (or caption) stay NaN."""
    import torch  # heavy, optional (siftbench[ml])
    import torch.nn.functional as F  # torch: heavy, optional

    def run(encode: Callable, inputs: Any, rows: list[int]) -> Any:
        features = torch.full((len(uids), dim), float("nan"))
        if rows:
            features[rows] = F.normalize(encode(inputs).float(), dim=-1).cpu()
        return features

    images = batcher.to_device(images, device) if image_rows else None
    tokens = tokens.to(device, non_blocking=True) if text_rows else None
    return uids, run(model.encode_image, images, image_rows), run(model.encode_text, tokens, text_rows)


def _shard_batches(tars: list[Path], preprocess: Callable, tokenizer: Callable, batch_size: int,
                   normalize_later: bool = False) -> Any:
    """An IterableDataset of ("batch", shard index, uids, images, image rows, tokens, text rows) items and
    one ("end", shard index, counts, damage summary or None) per shard; DataLoader workers take whole shards. ``normalize_later``:
    images stay uint8 where BatchPreprocess can (``BatchPreprocess.to_device`` finishes them)."""
    from torch.utils.data import IterableDataset  # torch: heavy, optional

    class ShardBatches(IterableDataset):
        def __iter__(self) -> Iterator[tuple]:
            from torch.utils.data import get_worker_info  # torch: heavy, optional

            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            batcher = BatchPreprocess(preprocess, normalize_later=normalize_later)
            for index, tar in enumerate(tars):
                if index % workers == worker:
                    yield from _decode_shard(index, tar, batcher, tokenizer, batch_size)

    return ShardBatches()


# Captions on which the fast tokenizer must give the tokenizer's own tokens before it is used: mixed case,
# runs of spaces, punctuation, non-ASCII, entities, and one longer than the context (truncation).
def default_decode_workers(device: str) -> int:
    """Beside a GPU, a decode worker per core but one (up to 16): ViT-B-32 on an H100 took 15 workers
    decoding 224 px JPEGs to keep up (README, GPU checks). None on the CPU: there the model's threads
    already use every core, and a worker preempting one of them stalls the other at each op's barrier
    (measured on 2 cores: 0.69 of the in-memory model with a worker, 0.77-0.82 without one)."""
    resolved = EmbedModel("", None, None, device).resolved_device()
    if resolved == "cpu":
        return 0
    return max(1, min(16, usable_cores() - 1))


def _embed_tar_job(spec: EmbedModel, out: Path, batch_size: int, bundle: tuple[Any, Callable, Callable],
                   tar: Path) -> None:
    """One shard in an executor's worker, with the model that worker loaded once."""
    embed_tars(bundle, [tar], out, batch_size=batch_size, device=spec.resolved_device(), progress=False)


def _no_foreign_embeddings(out: Path) -> None:
    if any(out.glob("*.npz")):
        raise StageError(f"{out} holds embeddings that no stage.json describes (made by an older siftbench or "
                         "another tool); use another model key or delete that folder")


def _collect_stats(out: Path, tars: Sequence[Path]) -> dict[str, Any]:
    """Totals over every shard's stats file (including shards embedded by earlier calls)."""
    totals: Counter = Counter()
    reasons: Counter = Counter()
    damaged: list[str] = []
    lost_members = 0
    done = 0
    for tar in tars:
        path = out / "stats" / f"{tar.stem}.json"
        if not (out / f"{tar.stem}.npz").exists() or not path.exists():
            continue
        done += 1
        shard = json.loads(path.read_text())
        totals.update({k: shard[k] for k in ("samples", "rows", "embedded", "seconds", "model_seconds")})
        reasons.update(shard["reasons"])
        if shard["damaged"]:
            damaged.append(tar.name)
            lost_members += (shard.get("damage") or {}).get("lost_members", 0)
    seconds = totals.pop("seconds", 0.0)
    return {
        "shards": len(tars),
        "shards_done": done,
        **{k: int(totals.get(k, 0)) for k in ("samples", "rows", "embedded")},
        "reasons": dict(sorted(reasons.items())),
        "damaged_shards": damaged,
        "damaged_members_lost": lost_members,
        "seconds": round(seconds, 3),
        "model_seconds": round(totals.get("model_seconds", 0.0), 3),
        "samples_per_s": round(totals.get("samples", 0) / seconds, 1) if seconds else None,
    }
