"""embed: pool tars -> ``embeddings/<model_key>/<shard>.npz``, the input of CLIP-score and embedding filters.

    embeddings/<model_key>/
      <shard>.npz          uid (u8,u8), image (N, D) float16, text (N, D) float16, similarity (N,) float32
      stats/<shard>.json   what happened to that shard's samples (counts per reason, time)
      stats.json           the totals, rewritten at the end of every call
      model.json           which weights made these embeddings (a resume with other weights is refused)

Features are L2-normalised fp32 model outputs stored as float16; ``similarity`` is the cosine of the
fp32 features (DataComp's ``clip_*_similarity_score``). Rows follow the tar's order and carry their
uids, so the Pool reader joins them on uid. Every sample with a uid gets a row: one whose image cannot be
decoded gets NaN image features and a NaN similarity (filters drop NaN scores and count them), and so
does a metadata uid of the shard that the tar lacks (failed download, damaged tar). Each npz appears
atomically after its stats, so it is the shard's completion marker: a rerun skips finished shards.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from string import hexdigits
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import atomic_path, write_json
from siftbench.benchmark.core.errors import PoolError, StageError
from siftbench.benchmark.core.pool import iter_tar_samples, sample_image, sample_uid
from siftbench.benchmark.core.uids import file_sha256, hex_to_uids, isin_uids

_HEX = frozenset(hexdigits)


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
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self) -> tuple[Any, Callable, Callable]:
        from siftbench.benchmark.stages.models import load_model

        return load_model(self.arch, checkpoint=self.checkpoint, pretrained=self.pretrained,
                          device=self.resolved_device())


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
) -> dict[str, Any]:
    """Embed every tar of ``pool_root/shards`` not embedded yet; return (and write) the stats.

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
    _claim(out, identity)
    _remove_partial_files(out)
    todo = [t for t in tars if not (out / f"{t.stem}.npz").exists()]
    start = time.perf_counter()
    if todo and executor is None:
        embed_tars(spec.load(), todo, out, pool_root, batch_size=batch_size, device=spec.resolved_device(),
                   num_workers=num_workers, progress=progress, done_before=len(tars) - len(todo))
    elif todo:
        from siftbench.benchmark.core.executors import map_with_state

        job = partial(_embed_tar_job, spec, out, pool_root, batch_size)
        map_with_state(executor, spec.load, job, todo, desc=f"embed {model_key}")
    stats = _collect_stats(out, tars)
    seconds = time.perf_counter() - start
    stats.update(model_key=model_key, model=identity, shards_embedded_now=len(todo),
                 seconds_now=round(seconds, 3))
    write_json(out / "stats.json", stats)
    return stats


def embed_tars(
    bundle: tuple[Any, Callable, Callable],
    tars: Sequence[Path],
    out: Path,
    pool_root: Path | None = None,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    done_before: int = 0,
) -> None:
    """Embed these tars with an already loaded (model, preprocess, tokenizer) into ``out``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from siftbench.benchmark.stages.train import torch_threads

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
    with _intra_op_threads(threads), torch.no_grad(), tqdm(
        total=done_before + len(tars), initial=done_before, desc="embed", unit="shard", disable=not progress
    ) as bar:
        for item in stream:
            shard = pending.setdefault(item[1], _Shard(tars[item[1]], dim))
            if item[0] == "batch":
                clock = time.perf_counter()
                shard.add(*_encode(model, device, dim, batcher, *item[2:]))
                shard.model_seconds += time.perf_counter() - clock
            else:
                shard.finish(out, pool_root, counts=Counter(item[2]))
                del pending[item[1]]
                bar.update(1)


@contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, and set back after it."""
    import torch

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

    def finish(self, out: Path, pool_root: Path | None, counts: Counter) -> None:
        import torch

        image = torch.cat(self.image).numpy() if self.image else np.zeros((0, self.dim), np.float32)
        text = torch.cat(self.text).numpy() if self.text else np.zeros((0, self.dim), np.float32)
        uids = hex_to_uids(self.uids)
        metadata = pool_root / "metadata" / f"{self.tar.stem}.parquet" if pool_root is not None else None
        if metadata is not None and metadata.exists():
            # Metadata uids the tar lacks get NaN rows, so the Pool reader can join every uid of the shard.
            import pyarrow.parquet as pq

            listed = hex_to_uids(pq.read_table(metadata, columns=["uid"]).column("uid"))
            absent = listed[~isin_uids(listed, uids)]
            if len(absent):
                counts["missing_from_tar"] += len(absent)
                uids = np.concatenate([uids, absent])
                nan = np.full((len(absent), self.dim), np.nan, np.float32)
                image, text = np.concatenate([image, nan]), np.concatenate([text, nan])
        similarity = (image * text).sum(axis=1, dtype=np.float32)  # cosine of unit fp32 vectors; NaN stays NaN
        rows = len(uids)
        embedded = int(np.isfinite(similarity).sum())
        write_json(out / "stats" / f"{self.tar.stem}.json", {
            "samples": counts.pop("samples", 0), "rows": rows, "embedded": embedded,
            "reasons": dict(counts), "damaged": bool(counts.get("damaged_tar")),
            "seconds": round(time.perf_counter() - self.started, 3), "model_seconds": round(self.model_seconds, 3),
        })
        with atomic_path(out / f"{self.tar.stem}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, uid=uids, image=image.astype(np.float16), text=text.astype(np.float16),
                     similarity=similarity)


def _encode(model: Any, device: str, dim: int, batcher: BatchPreprocess, uids: list[str], images: Any,
            image_rows: list[int], tokens: Any, text_rows: list[int]) -> tuple[list[str], Any, Any]:
    """Unit fp32 features on CPU for one batch; rows without an image (or caption) stay NaN."""
    import torch
    import torch.nn.functional as F

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
    one ("end", shard index, counts) per shard; DataLoader workers take whole shards. ``normalize_later``:
    images stay uint8 where BatchPreprocess can (``BatchPreprocess.to_device`` finishes them)."""
    from torch.utils.data import IterableDataset

    class ShardBatches(IterableDataset):
        def __iter__(self) -> Iterator[tuple]:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            batcher = BatchPreprocess(preprocess, normalize_later=normalize_later)
            for index, tar in enumerate(tars):
                if index % workers == worker:
                    yield from _decode_shard(index, tar, batcher, tokenizer, batch_size)

    return ShardBatches()


# Captions on which the fast tokenizer must give the tokenizer's own tokens before it is used: mixed case,
# runs of spaces, punctuation, non-ASCII, entities, and one longer than the context (truncation).
_TOKENIZER_PROBES = ("A Photo of  a RED circle ", "  there is\ta small, Teal star!", "x", "", "3 > 2 & 1 < 2",
                     "Caf\u00e9 &amp; cr\u00e8me \u201cbr\u00fbl\u00e9e\u201d", "don't STOP", "word " * 90)


class AsciiFastTokenizer:
    """open_clip's BPE tokenizer, giving the same tokens at about twice the speed (the embed stage's text side).

    - Its clean step is ftfy.fix_text, html.unescape twice, whitespace collapse and lower-case, and ftfy
      was a third of the time. On printable ASCII without '&' (most captions) ftfy and unescape are the
      identity (no mojibake, entities, controls, line breaks or wide characters to fix), so the clean is
      the collapse and lower-case alone; other text takes the tokenizer's own clean.
    - Each word's token ids are cached whole (open_clip caches only the BPE merge), and the batch is
      filled through numpy instead of a torch tensor per caption.

    ``wrap`` checks the result against the tokenizer on probe captions and keeps the tokenizer itself if
    anything differs (another clean mode, a reduction strategy, a different tokenizer class).
    """

    MAX_CACHED_WORDS = 1_000_000

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.words: dict[str, list[int]] = {}

    @classmethod
    def wrap(cls, tokenizer: Callable) -> Callable:
        needed = ("clean_fn", "pat", "byte_encoder", "encoder", "bpe", "sot_token_id", "eot_token_id", "context_length")
        if not all(hasattr(tokenizer, a) for a in needed) or getattr(tokenizer, "reduction_fn", None) is not None:
            return tokenizer
        fast = cls(tokenizer)
        try:
            same = bool((fast(list(_TOKENIZER_PROBES)) == tokenizer(list(_TOKENIZER_PROBES))).all())
        except Exception:  # an open_clip whose internals moved: use it as it is
            same = False
        return fast if same else tokenizer

    def clean(self, text: str) -> str:
        if text.isascii() and text.isprintable() and "&" not in text:
            return " ".join(text.split()).lower()
        return self.tokenizer.clean_fn(text)

    def word_ids(self, word: str) -> list[int]:
        ids = self.words.get(word)
        if ids is None:
            t = self.tokenizer  # the body of open_clip's SimpleTokenizer.encode, for one word
            encoded = "".join(t.byte_encoder[b] for b in word.encode("utf-8"))
            ids = [t.encoder[piece] for piece in t.bpe(encoded).split(" ")]
            if len(self.words) >= self.MAX_CACHED_WORDS:
                self.words.clear()
            self.words[word] = ids
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Any:
        import torch

        t = self.tokenizer
        texts = [texts] if isinstance(texts, str) else texts
        context = context_length or t.context_length
        out = np.zeros((len(texts), context), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [t.sot_token_id]
            for word in t.pat.findall(self.clean(text)):
                ids += self.word_ids(word)
            ids.append(t.eot_token_id)
            if len(ids) > context:
                ids = ids[:context]
                ids[-1] = t.eot_token_id
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)


class BatchPreprocess:
    """open_clip's preprocess, with its tensor part (ToTensor + Normalize) applied to a whole batch.

    Per image only the PIL part runs (resize, crop, RGB), and not even that when the image already has
    the model's size and mode, where those transforms are the identity. The batch then goes through the
    same float ops as ToTensor and Normalize, so the result is bit-identical to ``torch.stack([preprocess(
    image) ...])``. A preprocess of any other shape is applied per image, as it is.

    ``normalize_later``: ``batch`` gives the uint8 pixels (B, H, W, C) instead, and ``to_device`` looks
    them up in the same table on the device (for a GPU: a quarter of the bytes to move, the float work off
    the CPU).
    """

    _IDENTITY_AT_SIZE = ("Resize", "CenterCrop", "MaybeConvertMode", "_convert_to_rgb")

    def __init__(self, preprocess: Callable, normalize_later: bool = False):
        self.preprocess = preprocess
        self.normalize_later = normalize_later
        transforms = list(getattr(preprocess, "transforms", []))
        names = [getattr(t, "__name__", type(t).__name__) for t in transforms]
        self.fast = (len(names) >= 2 and names[-2] in ("ToTensor", "MaybeToTensor") and names[-1] == "Normalize"
                     and all(n in self._IDENTITY_AT_SIZE for n in names[:-2]))
        self.pil_stage = transforms[:-2] if self.fast else []
        self.size: tuple[int, int] | None = None
        self._table_cache: Any = None  # ToTensor + Normalize of every uint8 value, per channel
        self._device_table: Any = None  # the same on the device of to_device's batches
        if self.fast:
            normalize = transforms[-1]
            self.mean, self.std = normalize.mean, normalize.std
            crops = [t.size for t in self.pil_stage if type(t).__name__ == "CenterCrop"]
            resizes = [t for t in self.pil_stage if type(t).__name__ == "Resize"]
            # Only a square crop after a shorter-side resize gives every image one known size.
            if crops and len(set(crops[-1])) == 1 and all(r.max_size is None for r in resizes):
                self.size = (int(crops[-1][1]), int(crops[-1][0]))  # PIL's (width, height)
            else:
                self.fast = False

    def image(self, image: Any) -> Any:
        """One decoded image (PIL, or an RGB HWC uint8 array) -> what goes into the batch (HWC uint8 array,
        or the preprocessed tensor)."""
        if isinstance(image, np.ndarray):
            if self.fast and image.shape[1::-1] == self.size:
                return image
            from PIL import Image

            image = Image.fromarray(np.ascontiguousarray(image), "RGB")
        if not self.fast:
            return self.preprocess(image)
        if image.size != self.size or image.mode != "RGB":
            for transform in self.pil_stage:
                image = transform(image)
        return np.asarray(image)

    def batch(self, images: list[Any]) -> Any:
        import torch

        if not self.fast:
            return torch.stack(images)
        if self.normalize_later:
            return torch.from_numpy(np.stack(images))
        # A uint8 pixel has 256 values per channel, so ToTensor + Normalize is a table lookup. The table is
        # made by the same float ops, in the same order, as ToTensor (float, /255) and Normalize (-mean,
        # /std), so the batch is bit-identical; one gather replaces five passes of elementwise torch ops,
        # which on a busy CPU cost as much as decoding.
        table = self._table()
        pixels = np.stack(images)  # B, H, W, C
        out = np.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=table.dtype)
        for c in range(3):
            np.take(table[c], pixels[..., c], out=out[:, c])
        return torch.from_numpy(out)

    def to_device(self, batch: Any, device: str) -> Any:
        """A ``batch`` result on ``device``, as ``preprocess`` would give it: uint8 pixels are looked up
        there in the CPU-made table (arithmetic on a GPU would round differently)."""
        import torch

        from siftbench.benchmark.stages.pixels import normalize_uint8

        batch = batch.to(device, non_blocking=True)
        if batch.dtype != torch.uint8:
            return batch
        if self._device_table is None or self._device_table.device != batch.device:
            self._device_table = torch.from_numpy(self._table()).to(batch.device)  # once, not per batch
        return normalize_uint8(batch.permute(0, 3, 1, 2).contiguous(), self._device_table)

    def _table(self) -> np.ndarray:
        import torch

        from siftbench.benchmark.stages.pixels import normalize_table

        dtype = torch.get_default_dtype()
        if self._table_cache is None or self._table_cache.dtype != dtype:
            self._table_cache = normalize_table(self.mean, self.std, dtype)
        return self._table_cache.numpy()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_rgb(data: bytes) -> Any:
    """The pixels ``decode_image`` gives (RGB): a PIL image, or an HWC uint8 array for plain PNGs.

    A PNG whose header says 8-bit RGB (the world's, and most thumbnails') is decoded by OpenCV, ~4x
    faster than PIL for small images and, PNG being lossless, the same pixels (tested). Everything else
    (JPEG, whose decoders differ in rounding; palettes, alpha, 16-bit) goes through PIL as before.
    """
    pixels = _decode_plain_png(data)
    if pixels is not None:
        return pixels
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return None


def _decode_plain_png(data: bytes) -> np.ndarray | None:
    # IHDR is the first chunk: bit depth at byte 24, colour type at 25 (2 = truecolour, no alpha).
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[24] != 8 or data[25] != 2:
        return None
    cv2 = _opencv()
    if cv2 is None:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:  # tRNS adds alpha, damage
        return None
    return bgr[:, :, ::-1]


@cache
def _opencv() -> Any:
    try:
        import cv2
    except ImportError:  # optional: PIL decodes everything, only slower
        return None
    cv2.setNumThreads(1)  # one small image at a time: its thread pool would only contend with the model's
    return cv2


def _decode_shard(index: int, tar: Path, batcher: BatchPreprocess, tokenizer: Callable, batch_size: int
                  ) -> Iterator[tuple]:
    counts: Counter = Counter()
    uids: list[str] = []
    images: list[Any] = []
    image_rows: list[int] = []
    captions: list[str] = []
    text_rows: list[int] = []

    def flush() -> tuple:
        item = ("batch", index, list(uids), batcher.batch(images) if images else None, list(image_rows),
                tokenizer(captions) if captions else None, list(text_rows))
        for part in (uids, images, image_rows, captions, text_rows):
            part.clear()
        return item

    try:
        for _, sample in read_tar_samples(tar):
            counts["samples"] += 1
            uid = sample_uid(sample)
            if not uid:
                counts["no_uid"] += 1
                continue
            if len(uid) > 32 or not _HEX.issuperset(uid):
                counts["bad_uid"] += 1
                continue
            found = sample_image(sample)
            image = _decode_rgb(found[1]) if found is not None else None
            if image is None:
                counts["no_image" if found is None else "undecodable_image"] += 1
            else:
                image_rows.append(len(uids))
                images.append(batcher.image(image))
            if "txt" in sample:
                text_rows.append(len(uids))
                captions.append(sample["txt"].decode("utf-8", errors="replace"))
            else:
                counts["no_caption"] += 1
            uids.append(uid)
            if len(uids) == batch_size:
                yield flush()
    except PoolError:
        counts["damaged_tar"] += 1
    if uids:
        yield flush()
    # a plain dict: DataLoader's default_convert copies a Counter and then update()s it, doubling it
    yield "end", index, dict(counts)


_COMPRESSED = (b"\x1f\x8b", b"BZ", b"\xfd7")


def read_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """What ``iter_tar_samples`` yields, several times faster on the plain ustar/GNU tars that
    webdataset, img2dataset and the world write: headers are parsed from a memory map instead of
    through tarfile's per-member objects. Anything else (compressed, pax or long-name headers, a bad
    checksum, truncation, data after the end) goes to ``iter_tar_samples``, errors included."""
    import mmap

    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            yield from iter_tar_samples(path)
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            members = _tar_members(mm, size)
            if members is None:
                mm.close()
                yield from iter_tar_samples(path)
                return
            current_key: str | None = None
            current: dict[str, bytes] = {}
            for name, offset, length in members:
                key, _, ext = name.rsplit("/", 1)[-1].partition(".")
                if key != current_key and current:
                    yield current_key, current  # type: ignore[misc]
                    current = {}
                current_key = key
                current[ext.lower()] = mm[offset:offset + length]
            if current:
                yield current_key, current  # type: ignore[misc]


def _tar_members(mm: Any, size: int) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file, or None when the fast path must not guess."""
    if mm[:2] in _COMPRESSED or mm[:3] == b"\xfd7z":
        return None
    if size % 512 == 0:
        found = _standard_tar_members(mm, size)
        if found is not _NOT_STANDARD:
            return found  # type: ignore[return-value]
    return _tar_members_header_by_header(mm, size)


_NOT_STANDARD = object()


def _octal(fields: np.ndarray, digits: int) -> np.ndarray:
    """Numeric tar fields written the standard way (zero-padded octal, then NUL or space); -1 elsewhere."""
    values = fields[:, :digits].astype(np.int64) - 48
    ok = ((values >= 0) & (values <= 7)).all(axis=1) & np.isin(fields[:, digits], (0, 32))
    return np.where(ok, values @ (8 ** np.arange(digits - 1, -1, -1, dtype=np.int64)), -1)


def _standard_tar_members(mm: Any, size: int) -> Any:
    """``_tar_members`` for tars whose fields are in the standard form (what Python's tarfile and GNU tar
    write), with the per-member work in numpy: only the walk from header to header stays in Python.
    Returns _NOT_STANDARD for anything else (space-padded numbers, ustar prefixes), which the
    header-by-header parse then reads."""
    blocks = np.frombuffer(mm, dtype=np.uint8, count=size).reshape(-1, 512)
    lengths = _octal(blocks[:, 124:136], 11).tolist()  # every block: data blocks just give garbage
    starts: list[int] = []
    block, count = 0, len(blocks)
    while block < count:
        length = lengths[block]
        if length < 0:
            if not blocks[block].any():  # end of archive: the rest must be zeros too
                if blocks[block:].any():
                    return None
                break
            return _NOT_STANDARD
        starts.append(block)
        block += 1 + -(-length // 512)
    if block > count:  # the last member runs past the end: truncated
        return None
    if not starts:
        return []
    headers = blocks[starts]
    stored = _octal(headers[:, 148:156], 6)
    if (stored < 0).any():
        return _NOT_STANDARD
    if not _checksums_match(blocks.reshape(-1), [512 * b for b in starts], stored):
        return None
    kinds = headers[:, 156]
    if not np.isin(kinds, (0, 48, 53)).all():  # pax, long names, links: tarfile's job
        return None
    ustar = (headers[:, 257:263] == np.frombuffer(b"ustar\x00", np.uint8)).all(axis=1)
    if (ustar & (headers[:, 345] != 0)).any():  # a prefix extends some name
        return _NOT_STANDARD
    nul = headers[:, :100] == 0
    name_lengths = np.where(nul.any(axis=1), nul.argmax(axis=1), 100).tolist()
    return [
        (mm[512 * b : 512 * b + n].decode("utf-8", "surrogateescape"), 512 * (b + 1), lengths[b])
        for b, n, kind in zip(starts, name_lengths, kinds.tolist(), strict=True)
        if kind != 53  # directories
    ]


def _tar_members_header_by_header(mm: Any, size: int) -> list[tuple[str, int, int]] | None:
    members = []
    headers: list[int] = []
    stored_sums: list[int] = []
    pos = 0
    while pos + 512 <= size:
        header = mm[pos:pos + 512]
        if header.count(0) == 512:  # end of archive: the rest must be zeros too
            if mm[pos:].strip(b"\0"):
                return None
            break
        try:
            stored = int(header[148:156].strip(b"\0 ") or b"-1", 8)
            length = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:  # base-256 sizes, garbage: tarfile knows what to do
            return None
        headers.append(pos)
        stored_sums.append(stored)
        kind = header[156:157]
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        data = pos + 512
        if data + length > size:  # truncated
            return None
        if kind in (b"0", b"\0"):
            members.append((name.decode("utf-8", "surrogateescape"), data, length))
        elif kind != b"5":  # directories are skipped; pax, long names, links: leave them to tarfile
            return None
        pos = data + -(-length // 512) * 512
    else:
        if pos != size:
            return None
    if headers and not _checksums_match(np.frombuffer(mm, dtype=np.uint8, count=size), headers, stored_sums):
        return None
    return members


def _checksums_match(raw: np.ndarray, offsets: Sequence[int], stored: Any) -> bool:
    """Every tar header's checksum in one vectorised pass (summing 512 bytes per member in Python cost more
    than the rest of the parse): the header's byte sum with its checksum field counted as spaces."""
    at = np.asarray(offsets, dtype=np.int64)[:, None]
    sums = raw[at + np.arange(512)].sum(axis=1, dtype=np.int64) - raw[at + np.arange(148, 156)].sum(axis=1, dtype=np.int64)
    return bool(np.array_equal(sums + 256, np.asarray(stored, dtype=np.int64)))


def default_decode_workers(device: str) -> int:
    """Beside a GPU, a decode worker per core but one (up to 16): ViT-B-32 on an H100 took 15 workers
    decoding 224 px JPEGs to keep up (README, GPU checks). None on the CPU: there the model's threads
    already use every core, and a worker preempting one of them stalls the other at each op's barrier
    (measured on 2 cores: 0.69 of the in-memory model with a worker, 0.77-0.82 without one)."""
    resolved = EmbedModel("", None, None, device).resolved_device()
    if resolved == "cpu":
        return 0
    from siftbench.benchmark.stages.train import usable_cores

    return max(1, min(16, usable_cores() - 1))


def benchmark_embed_throughput(
    pool_root: str | Path,
    arch: str,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    max_shards: int | None = None,
    num_workers: int = 0,
    rounds: int = 5,
) -> dict[str, Any]:
    """Pairs/s of the whole stage (read, decode, preprocess, model, write) against the model alone on
    in-memory tensors, in this process; ``ratio`` = stage / model.

    The reference runs on the pool's own first batches, decoded into memory beforehand (a constant
    image is not the same work: its cost differs from real pictures'), for as many batches as the stage
    runs. The two alternate for ``rounds`` rounds, so a machine that slows down or speeds up midway
    (noisy neighbours, CPU steal) weighs on both; the ratio is over the summed times, with each round's
    own ratio reported too. The stage writes into a temporary folder, so the pool is left as it was.
    """
    import tempfile

    import torch

    spec = EmbedModel(arch, None if checkpoint is None else str(checkpoint), pretrained, device)
    model, preprocess, tokenizer = bundle = spec.load()
    tars = sorted((Path(pool_root) / "shards").glob("*.tar"))[:max_shards]
    if not tars:
        raise PoolError(f"pool {pool_root}: no shards/*.tar to embed")
    model = model.to(device).eval()
    batcher, fast_tokenizer = BatchPreprocess(preprocess), AsciiFastTokenizer.wrap(tokenizer)
    in_memory = []
    for item in _decode_shard(0, tars[0], batcher, fast_tokenizer, batch_size):
        if item[0] == "batch" and item[3] is not None and item[5] is not None:
            in_memory.append((item[3].to(device), item[5].to(device)))
        if len(in_memory) == 8:
            break
    if not in_memory:
        raise PoolError(f"{tars[0]}: no sample with both an image and a caption to measure the model on")
    # What the stage feeds the model on this device must be what the CPU preprocess gives, bit for bit.
    later = BatchPreprocess(preprocess, normalize_later=torch.device(device).type == "cuda")
    first = next(item for item in _decode_shard(0, tars[0], later, fast_tokenizer, batch_size) if item[3] is not None)
    same_inputs = bool(torch.equal(later.to_device(first[3], device).cpu(), in_memory[0][0].cpu()))

    def model_only(batches: int) -> float:
        clock = time.perf_counter()
        with torch.no_grad():
            for i in range(batches):
                images, tokens = in_memory[i % len(in_memory)]
                torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1).cpu()
                torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu()
        return time.perf_counter() - clock

    model_only(2)  # warm-up: allocator, thread pool, lazy inits
    stage_times, model_times, pairs, model_seconds = [], [], 0, 0.0
    for _ in range(max(1, rounds)):
        with tempfile.TemporaryDirectory() as tmp:
            clock = time.perf_counter()
            embed_tars(bundle, tars, Path(tmp), None, batch_size=batch_size, device=device,
                       num_workers=num_workers, progress=False)  # fmt: skip
            stage_times.append(time.perf_counter() - clock)
            stats = _collect_stats(Path(tmp), tars)
        pairs, model_seconds = stats["samples"], model_seconds + stats["model_seconds"]
        batches = max(1, round(pairs / batch_size))
        model_times.append(model_only(batches) * pairs / (batches * batch_size))  # the model alone, for `pairs`
    stage_rate = pairs * len(stage_times) / sum(stage_times)
    model_rate = pairs * len(model_times) / sum(model_times)
    return {
        "arch": arch,
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "shards": len(tars),
        "pairs": pairs,
        "rounds": len(stage_times),
        "stage_seconds": round(sum(stage_times), 3),
        "stage_model_seconds": round(model_seconds, 3),
        "stage_pairs_per_s": stage_rate,
        "in_memory_pairs_per_s": model_rate,
        "ratio": stage_rate / model_rate,
        "ratio_per_round": [round(m / s, 3) for s, m in zip(stage_times, model_times, strict=True)],
        "stage_inputs_equal_cpu_preprocess": same_inputs,
    }


def _embed_tar_job(spec: EmbedModel, out: Path, pool_root: Path, batch_size: int,
                   bundle: tuple[Any, Callable, Callable], tar: Path) -> None:
    """One shard in an executor's worker, with the model that worker loaded once."""
    embed_tars(bundle, [tar], out, pool_root, batch_size=batch_size, device=spec.resolved_device(), progress=False)


def _remove_partial_files(out: Path) -> None:
    """Temporaries left by a run killed mid-write (atomic_path's ``.NAME.tmp-PID``, PID no longer running)."""
    import os

    for folder in (out, out / "stats"):
        for tmp in folder.glob(".*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            try:
                os.kill(int(pid), 0)
            except (ValueError, ProcessLookupError):
                tmp.unlink(missing_ok=True)
            except PermissionError:  # someone else's live process
                pass


def _claim(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to mix embeddings of different weights under one model key."""
    marker = out / "model.json"
    if marker.exists():
        import json

        before = json.loads(marker.read_text())
        same = ("arch", "pretrained", "checkpoint_sha256")
        if any(before.get(k) != identity[k] for k in same):
            raise StageError(
                f"{out} holds embeddings of {({k: before.get(k) for k in same})}, not of "
                f"{({k: identity[k] for k in same})}; use another model key or delete that folder"
            )
        return
    write_json(marker, identity)


def _collect_stats(out: Path, tars: Sequence[Path]) -> dict[str, Any]:
    """Totals over every shard's stats file (including shards embedded by earlier calls)."""
    import json

    totals: Counter = Counter()
    reasons: Counter = Counter()
    damaged: list[str] = []
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
    seconds = totals.pop("seconds", 0.0)
    return {
        "shards": len(tars),
        "shards_done": done,
        **{k: int(totals.get(k, 0)) for k in ("samples", "rows", "embedded")},
        "reasons": dict(sorted(reasons.items())),
        "damaged_shards": damaged,
        "seconds": round(seconds, 3),
        "model_seconds": round(totals.get("model_seconds", 0.0), 3),
        "samples_per_s": round(totals.get("samples", 0) / seconds, 1) if seconds else None,
    }


def world_scorer_checkpoint(cfg: Any, arch: str) -> Path:
    """The embedded world's scoring model (``--pretrained world``): trained on the clean reference set
    once and cached in the world folder, as ``siftbench run`` does before clip_score."""
    from siftbench.benchmark.experiment.config import to_dict
    from siftbench.benchmark.world import ensure_world
    from siftbench.benchmark.world.scorer import train_scorer

    scorer = to_dict(cfg.scorer)
    if scorer["arch"] != arch:
        raise StageError(f"the world's scoring model is a {scorer['arch']!r}, not {arch!r}: pass --model {scorer['arch']}")
    return Path(train_scorer(ensure_world(to_dict(cfg.world)), scorer))
