"""Drawing the world's images: shapes and stroke digits over textured backgrounds, plus copy variants.

Every image is a pure function of its row of render parameters (positions are fractions of the canvas,
randomness comes from the row's ``noise_seed``), so a copy of a sample is made by rendering its source's
row again, in any process, and the pixels are identical. Shapes are drawn into a 4x supersampled mask
and box-downsampled, which gives clean anti-aliased edges at 32 px.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
BACKGROUNDS = ("plain", "gradient", "stripes", "checker", "dots", "noise")

Outline = list[tuple[np.ndarray, int]]  # polygons in unit coordinates, each with its fill (255 or 0 = hole)


def _ngon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _ellipse(rx: float, ry: float, cx: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.arange(n) * 2 * math.pi / n
    return np.stack([cx + rx * np.cos(t), ry * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    outer = _ngon(points)
    inner_pts = _ngon(points, inner, phase=-math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _heart(n: int = 64) -> np.ndarray:
    t = np.arange(n) * 2 * math.pi / n
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 17, -(y + 2.5) / 17], axis=1)


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


# y points down, as in image coordinates. Radius ~1 for every shape so "size" means the same thing.
SHAPES: dict[str, Outline] = {
    "circle": [(_ellipse(1, 1), 255)],
    "ellipse": [(_ellipse(1, 0.55), 255)],
    "ring": [(_ellipse(1, 1), 255), (_ellipse(0.55, 0.55), 0)],
    "square": [(_poly(-0.75, -0.75, 0.75, -0.75, 0.75, 0.75, -0.75, 0.75), 255)],
    "rectangle": [(_poly(-1, -0.5, 1, -0.5, 1, 0.5, -1, 0.5), 255)],
    "diamond": [(_poly(0, -1, 0.62, 0, 0, 1, -0.62, 0), 255)],
    "triangle": [(_ngon(3), 255)],
    "pentagon": [(_ngon(5), 255)],
    "hexagon": [(_ngon(6, phase=0), 255)],
    "octagon": [(_ngon(8, phase=math.pi / 8), 255)],
    "star": [(_star(), 255)],
    "cross": [(_poly(-0.3, -1, 0.3, -1, 0.3, -0.3, 1, -0.3, 1, 0.3, 0.3, 0.3,
                     0.3, 1, -0.3, 1, -0.3, 0.3, -1, 0.3, -1, -0.3, -0.3, -0.3), 255)],
    "heart": [(_heart(), 255)],
    "crescent": [(_ellipse(1, 1), 255), (_ellipse(0.85, 0.85, cx=0.5), 0)],
    "arrow": [(_poly(-1, -0.22, 0.15, -0.22, 0.15, -0.6, 1, 0, 0.15, 0.6, 0.15, 0.22, -1, 0.22), 255)],
    "trapezoid": [(_poly(-0.5, -0.6, 0.5, -0.6, 1, 0.6, -1, 0.6), 255)],
}  # fmt: skip


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 10) -> list[tuple]:
    t = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True))


# Stroke skeletons of handwritten-looking digits in a box x in [-0.35, 0.35], y in [-0.5, 0.5] (y down).
# Angles in degrees, clockwise on screen because y points down.
DIGIT_STROKES: dict[int, list[list[tuple]]] = {
    0: [_arc(0, 0, 0.3, 0.48, -90, 270, 24)],
    1: [[(-0.18, -0.3), (0.05, -0.5), (0.05, 0.5)]],
    2: [[*_arc(0, -0.22, 0.28, 0.26, 200, 380, 10), (-0.3, 0.5), (0.32, 0.5)]],
    3: [_arc(0, -0.25, 0.26, 0.24, 200, 450, 12) + _arc(0, 0.24, 0.3, 0.26, -90, 160, 12)],
    4: [[(0.15, 0.5), (0.15, -0.5), (-0.32, 0.2), (0.32, 0.2)]],
    5: [[(0.3, -0.5), (-0.22, -0.5), (-0.26, -0.05), *_arc(0, 0.2, 0.3, 0.3, -120, 150, 12)]],
    6: [_arc(0.05, -0.1, 0.3, 0.42, -70, -180, 8) + _arc(0, 0.22, 0.28, 0.27, 180, 540, 20)],
    7: [[(-0.3, -0.5), (0.32, -0.5), (-0.08, 0.5)]],
    8: [_arc(0, -0.26, 0.24, 0.23, 90, 450, 18), _arc(0, 0.24, 0.29, 0.26, -90, 270, 18)],
    9: [_arc(0, -0.22, 0.28, 0.27, 0, 360, 20) + _arc(-0.05, 0.1, 0.33, 0.4, 0, 110, 8)],
}


def render(row: dict, width: int, height: int, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """Render one sample (``row`` = its render parameters) as an (height, width, 3) uint8 array.

    Keys used: kind ("shape" | "digit"), shape, digit, colour, cx, cy, scale, angle, background,
    noise_seed, jitter, shading, blank (True: one solid colour). Positions and scale are fractions of
    the canvas, so the same row renders a normal, tiny or extremely elongated version of one picture.
    """
    rng = np.random.default_rng(int(row["noise_seed"]))
    background = _background(row["background"], width, height, rng)
    if row.get("blank"):
        return np.broadcast_to(background[:1, :1], background.shape).astype(np.uint8)
    side = min(width, height)
    radius = row["scale"] * side
    centre = (row["cx"] * width, row["cy"] * height)
    mask = _mask(row, width, height, centre, radius, rng)
    colour = (np.asarray(palette[row["colour"]]) + rng.uniform(-row["jitter"], row["jitter"], 3)).astype(
        np.float32
    )
    # Shading: brightness varies linearly across the object, so colour is not a single RGB point.
    direction = rng.uniform(0, 2 * math.pi)
    xx, yy = _grid(width, height)
    cos, sin = math.cos(direction), math.sin(direction)
    along = ((xx + 0.5 - centre[0]) * cos + (yy + 0.5 - centre[1]) * sin) / max(radius, 1)
    shade = 1 + row["shading"] / 2 * np.clip(along, -1, 1)
    fg = np.clip(shade[..., None] * colour, 0, 255)
    out = background + (fg - background) * mask[..., None]
    return np.rint(out).astype(np.uint8)


def _mask(row: dict, width: int, height: int, centre: tuple, radius: float, rng) -> np.ndarray:
    s = SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    angle = math.radians(row["angle"])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    origin = np.array(centre) * s

    def place(points: np.ndarray, unit: float) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(points) @ rot.T) * unit + origin]

    if row["kind"] == "digit":
        unit = 2 * radius * s  # the digit's box is one unit tall
        width_px = max(1, round(rng.uniform(0.11, 0.17) * unit))
        for stroke in DIGIT_STROKES[int(row["digit"])]:
            pts = np.asarray(stroke) + rng.normal(0, 0.025, (len(stroke), 2))
            placed = place(pts, unit)
            draw.line(placed, fill=255, width=width_px)
            r = width_px / 2
            for x, y in placed:  # round joints and caps, as a pen leaves (PIL's joint="curve" is slow)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    else:
        for points, fill in SHAPES[row["shape"]]:
            draw.polygon(place(points, radius * s), fill=fill)
    small = canvas.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A greyish colour: backgrounds must not compete with the palette for the caption's colour word."""
    return np.clip(rng.uniform(35, 225) + rng.normal(0, 10, 3), 0, 255)


@cache
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return xx, yy


def _background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    base = _muted(rng)
    other = np.clip(base + (1 if rng.random() < 0.5 else -1) * rng.uniform(30, 70), 0, 255)
    xx, yy = _grid(width, height)
    if kind == "plain":
        return np.broadcast_to(base.astype(np.float32), (height, width, 3))
    if kind in ("gradient", "stripes"):
        theta = rng.uniform(0, math.pi)
        along = xx * math.cos(theta) + yy * math.sin(theta)
        if kind == "gradient":
            t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
        else:
            t = (np.sin(along * (2 * math.pi / rng.uniform(4, 9))) > 0).astype(np.float32)
    elif kind == "checker":
        p = int(rng.integers(3, 7))
        t = ((xx // p + yy // p) % 2).astype(np.float32)
    elif kind == "dots":
        p = int(rng.integers(5, 9))
        t = (np.hypot((xx % p) - p / 2, (yy % p) - p / 2) < p / 4).astype(np.float32)
    elif kind == "noise":
        t = rng.random((height, width), dtype=np.float32)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    return base.astype(np.float32) + (other - base).astype(np.float32) * t[..., None]


@cache
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real 8x8 handwritten digits bundled with scikit-learn (no download): images, labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def render_real_digit(index: int, size: int) -> np.ndarray:
    """One sklearn digit as dark ink on paper, upsampled (bilinear) to size x size RGB."""
    images, _ = sklearn_digits()
    grey = np.rint(255 - images[index] * (255 / 16)).astype(np.uint8)
    big = Image.fromarray(grey, "L").resize((size, size), Image.BILINEAR).convert("RGB")
    return np.asarray(big)


# -- copy variants: how a near duplicate differs from its source ---------------------------------------


def _reencode(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(50, 90)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _resize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    factor = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
    size = (max(4, round(w * factor)), max(4, round(h * factor)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    side = rng.uniform(0.75, 0.9)
    cw, ch = max(2, round(w * side)), max(2, round(h * side))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return np.asarray(Image.fromarray(img[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC))


def _flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "exact": lambda img, rng: img,
    "reencode": _reencode,
    "resize": _resize,
    "crop": _crop,
    "flip": _flip,
}


def apply_variant(img: np.ndarray, variant: str, seed: int) -> np.ndarray:
    return VARIANTS[variant](img, np.random.default_rng(seed))


def encode_png(img: np.ndarray) -> bytes:
    """Lossless 8-bit RGB PNG, written here so the bytes depend only on zlib, not on an imaging library.

    Lossless because JPEG's chroma subsampling would smear the colour a caption names at 32 px.
    """
    height, width = img.shape[:2]
    rows = np.ascontiguousarray(img, dtype=np.uint8).reshape(height, width * 3)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
