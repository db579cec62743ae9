"""Image fingerprints shared by the image-features stage and the filters that read them.

sha256 of the bytes (as four big-endian uint64 words), imagehash-compatible pHash and dHash (64-bit,
plus the hashes of the mirrored image) and an 8x8 RGB thumbnail. Pure functions of image bytes: the
stage (stages/image_features.py) stores them per pool shard, and eval decontamination computes the
same ones for the eval images, so both sides always agree.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .uids import hex_to_uids

HASH_ARRAYS = ("phash", "phash_mirror", "dhash", "dhash_mirror")
THUMB = 8  # the colour thumbnail's side: 8 x 8 x 3 bytes
# The small colour image's side: 16 x 16 x 3 bytes. Crop matching resamples windows of it, which an 8x8
# thumbnail is too coarse for; at the world's 32 px it keeps a 2x2 box of every pixel.
SMALL = 16
# Every array the stage stores besides uid; a file written by an older version lacks some and is redone.
FEATURE_ARRAYS = (*HASH_ARRAYS, "thumb", "small", "ok", "sha256")


def sha256_words(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(data).digest(), dtype=">u8").astype(np.uint64)


def hex_sha256_words(hexes: Any) -> tuple[np.ndarray, np.ndarray]:
    """64-digit hex digests (a metadata ``sha256`` column) -> (rows, 4) uint64 words and a valid mask.

    Missing or malformed digests are reported in the mask (False), not raised: one bad row must not
    stop a pool-wide dedup.
    """
    arr = hexes if isinstance(hexes, pa.Array | pa.ChunkedArray) else pa.array(np.asarray(hexes, dtype=object))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.string())
    lowered = pc.utf8_lower(arr)
    valid = pc.fill_null(pc.match_substring_regex(lowered, r"^[0-9a-f]{64}$"), False).to_numpy(zero_copy_only=False)
    words = np.zeros((len(arr), 4), dtype=np.uint64)
    if valid.any():
        good = lowered.filter(pa.array(valid))
        for half in range(2):
            part = hex_to_uids(pc.utf8_slice_codeunits(good, 32 * half, 32 * half + 32))
            words[valid, 2 * half] = part["f0"]
            words[valid, 2 * half + 1] = part["f1"]
    return words, valid


def perceptual_hashes(images: Iterable[bytes]) -> dict[str, np.ndarray]:
    """pHash and dHash (plus mirrored variants) of encoded images, bit-identical to imagehash's, and thumbnails.

    Decoding and resizing are per image (PIL, in C); the DCT, medians and bit packing run once over the
    whole batch. Undecodable images get ``ok = 0`` and zero hashes.
    """
    from PIL import Image, UnidentifiedImageError  # heavy, optional (siftbench[ml])

    big: list[np.ndarray] = []
    small: list[np.ndarray] = []
    ok: list[bool] = []
    blank32 = np.zeros((32, 32), dtype=np.float64)
    blank9 = np.zeros((8, 9), dtype=np.float64)
    thumbs: list[np.ndarray] = []
    smalls: list[np.ndarray] = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as img:
                grey = img.convert("L")
                big.append(np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64))
                small.append(np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64))
                rgb = img.convert("RGB")
                thumbs.append(np.asarray(rgb.resize((THUMB, THUMB), Image.Resampling.BOX)).ravel())
                smalls.append(np.asarray(rgb.resize((SMALL, SMALL), Image.Resampling.BOX)).ravel())
                ok.append(True)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            big.append(blank32)
            small.append(blank9)
            thumbs.append(np.zeros(THUMB * THUMB * 3, dtype=np.uint8))
            smalls.append(np.zeros(SMALL * SMALL * 3, dtype=np.uint8))
            ok.append(False)
    valid = np.array(ok, dtype=bool)
    if not len(valid):
        empty = np.zeros(0, dtype=np.uint64)
        return {**{k: empty for k in HASH_ARRAYS}, "thumb": np.zeros((0, THUMB * THUMB * 3), np.uint8),
                "small": np.zeros((0, SMALL * SMALL * 3), np.uint8), "ok": np.zeros(0, dtype=np.uint8)}
    grey32 = np.stack(big)
    grey9 = np.stack(small)
    out = {
        "phash": _phash(grey32),
        "phash_mirror": _phash(grey32[:, :, ::-1]),
        "dhash": _dhash(grey9),
        "dhash_mirror": _dhash(grey9[:, :, ::-1]),
    }
    for k in HASH_ARRAYS:
        out[k][~valid] = 0
    out["thumb"] = np.stack(thumbs)
    out["small"] = np.stack(smalls)
    out["ok"] = valid.astype(np.uint8)
    return out


def _phash(grey32: np.ndarray) -> np.ndarray:
    from scipy.fft import dct  # heavy: imported where it is used

    # imagehash: 2-D DCT-II (unnormalised, as scipy.fftpack) of the 32x32 grey image, top-left 8x8,
    # each coefficient compared with their median.
    coeffs = dct(dct(grey32, axis=1), axis=2)[:, :8, :8].reshape(len(grey32), 64)
    return _pack(coeffs > np.median(coeffs, axis=1, keepdims=True))


def _dhash(grey9: np.ndarray) -> np.ndarray:
    return _pack((grey9[:, :, 1:] > grey9[:, :, :-1]).reshape(len(grey9), 64))


def _pack(bits: np.ndarray) -> np.ndarray:
    """(rows, 64) booleans -> uint64 with the first bit most significant (imagehash's hex order)."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hash_image_bytes(images: list[bytes]) -> dict[str, np.ndarray]:
    """Everything this stage stores per image except the uid: sha256 words, hashes, ok flags."""
    out = perceptual_hashes(images)
    zero = np.zeros(4, dtype=np.uint64)
    digests = [sha256_words(b) if b else zero for b in images]
    out["sha256"] = np.stack(digests) if images else np.zeros((0, 4), np.uint64)
    return out


def mirror_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails of the horizontally flipped images (a box filter commutes with the flip)."""
    t = np.asarray(thumbs).reshape(len(thumbs), THUMB, THUMB, 3)
    return np.ascontiguousarray(t[:, :, ::-1]).reshape(len(thumbs), -1)


def sha256_valid(words: np.ndarray) -> np.ndarray:
    """A digest of all-zero words means "no image" (the stage writes zeros where there were no bytes)."""
    return np.asarray(words).any(axis=1)
