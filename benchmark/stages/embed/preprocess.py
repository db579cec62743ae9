"""What the embed stage does to a sample before the model sees it: decode, resize, normalise, tokenize."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from string import hexdigits
from typing import Any

import numpy as np

from siftbench.benchmark.core.tars import TarSamples, sample_image, sample_uid
from siftbench.benchmark.stages.pixels import normalize_table, normalize_uint8

_HEX = frozenset(hexdigits)


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


        batch = batch.to(device, non_blocking=True)
        if batch.dtype != torch.uint8:
            return batch
        if self._device_table is None or self._device_table.device != batch.device:
            self._device_table = torch.from_numpy(self._table()).to(batch.device)  # once, not per batch
        return normalize_uint8(batch.permute(0, 3, 1, 2).contiguous(), self._device_table)

    def _table(self) -> np.ndarray:
        import torch


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

    samples = TarSamples(tar)  # read past damage, with a warning on stderr
    for _, sample in samples:
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
    if samples.damage:
        counts["damaged_tar"] += 1
    if uids:
        yield flush()
    # a plain dict: DataLoader's default_convert copies a Counter and then update()s it, doubling it
    yield "end", index, dict(counts), samples.damage.summary() if samples.damage else None
