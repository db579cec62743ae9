"""A small DataComp-layout pool with planted duplicates and eval copies, written on the fly.

Images are 32x32 like the embedded world's: a shape in a random colour over a textured two-colour
background, so different samples really are different pictures. Copies are planted as the world
plants them: exact (same bytes), re-encoded (JPEG q50-90), resized (x0.6-0.85 or x1.25-2), cropped
(75-90% of the side, scaled back) and flipped. The truth table says which row copies which.

``embeddings/toy/<shard>.npz`` holds a stand-in for a CLIP image embedding: a fixed random projection of
what the picture shows (shape, colours, position, size) plus a little noise, so a crop or flip lands
near its source and different pictures do not. It tests the filters' mechanics, not a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {"red": (210, 45, 45), "green": (60, 165, 70), "blue": (55, 95, 215), "yellow": (230, 205, 45),
           "purple": (135, 65, 185), "orange": (240, 135, 35)}  # fmt: skip
VARIANTS = ("reencode", "resize", "crop", "flip")
EMB_DIM = 64


def picture(rng: np.random.Generator) -> dict:
    return {
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
        "bg": rng.integers(0, 256, size=(2, 3)),
        "angle": float(rng.uniform(0, 2 * np.pi)),
        "cx": float(rng.uniform(10, 22)),
        "cy": float(rng.uniform(10, 22)),
        "r": float(rng.uniform(5, 10)),
        "texture": int(rng.integers(2**31)),
    }


def render(p: dict, size: int = 32) -> np.ndarray:
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.cos(p["angle"]) * xx + np.sin(p["angle"]) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    bg = (1 - t)[..., None] * p["bg"][0] + t[..., None] * p["bg"][1]
    bg += np.random.default_rng(p["texture"]).normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy, r, fill = p["cx"], p["cy"], p["r"], COLOURS[p["colour"]]
    box = (cx - r, cy - r, cx + r, cy + r)
    if p["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif p["shape"] == "square":
        draw.rectangle(box, fill=fill)
    elif p["shape"] == "triangle":
        draw.polygon([(cx - r, cy + r), (cx + r, cy + r), (cx - r * 0.3, cy - r)], fill=fill)
    elif p["shape"] == "cross":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=fill)
    else:
        draw.ellipse(box, outline=fill, width=3)
    return np.asarray(img)


def apply_variant(img: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    if variant == "reencode":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(50, 90)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if variant == "resize":
        f = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
        return np.asarray(Image.fromarray(img).resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC))
    if variant == "crop":
        side = rng.uniform(0.75, 0.9)
        cw, ch = round(w * side), round(h * side)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return np.asarray(Image.fromarray(img[y : y + ch, x : x + cw]).resize((w, h), Image.Resampling.BICUBIC))
    if variant == "flip":
        return np.ascontiguousarray(img[:, ::-1])
    raise ValueError(variant)


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def latent(p: dict, variant: str | None = None) -> np.ndarray:
    """What the picture shows, as numbers; a crop moves and grows the shape, a flip mirrors it."""
    cx, cy, r = p["cx"], p["cy"], p["r"]
    if variant == "flip":
        cx = 31 - cx
    if variant == "crop":
        cx, cy, r = 16 + (cx - 16) * 1.15, 16 + (cy - 16) * 1.15, r * 1.15
    shape = np.eye(len(SHAPES))[SHAPES.index(p["shape"])] * 3 - 0.6
    colour = (np.array(COLOURS[p["colour"]]) - 128) / 48
    bg = (p["bg"].ravel() - 128) / 48
    return np.concatenate([shape, colour, bg, [(cx - 16) / 8, (cy - 16) / 8, (r - 7.5) / 4]])


def embed(lat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    proj = np.random.default_rng(1234).normal(size=(len(lat), EMB_DIM))
    v = lat @ proj + rng.normal(0, 0.05, EMB_DIM)
    return v / np.linalg.norm(v)


def make_dup_pool(
    root: str | Path,
    n_shards: int = 4,
    per_shard: int = 120,
    seed: int = 0,
    copies: int = 12,
    exact: int = 8,
    eval_root: str | Path | None = None,
    eval_per_task: int = 40,
    eval_copies: int = 9,
) -> pd.DataFrame:
    """Write the pool (and, with ``eval_root``, two eval tasks); return the truth table.

    Truth columns: uid, shard, kind ("clean", "exact", a variant name or "eval_<variant>"), source (the
    uid a copy copies, or the eval image key), eval_task. ``copies`` rows per variant and ``exact``
    exact copies replace clean rows; ``eval_copies`` rows copy eval images (exact, reencode, flip).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    n = n_shards * per_shard
    pics = [picture(rng) for _ in range(n)]
    images: list[np.ndarray | bytes] = [render(p) for p in pics]
    lats = [latent(p) for p in pics]
    uids = [rng.bytes(16).hex() for _ in range(n)]
    kinds = ["clean"] * n
    sources: list[str | None] = [None] * n
    tasks: list[str | None] = [None] * n
    order = rng.permutation(n)
    slots = iter(order.tolist())
    originals = [int(i) for i in order[-(n // 3) :]]  # sources are never copies themselves
    for variant in VARIANTS:
        for _ in range(copies):
            i, src = next(slots), originals[int(rng.integers(len(originals)))]
            images[i] = apply_variant(render(pics[src]), variant, rng)
            lats[i] = latent(pics[src], variant)
            kinds[i], sources[i] = variant, uids[src]
    for _ in range(exact):
        i, src = next(slots), originals[int(rng.integers(len(originals)))]
        images[i], lats[i], kinds[i], sources[i] = images[src], lats[src], "exact", uids[src]
    if eval_root is not None:
        eval_images = write_eval(Path(eval_root), eval_per_task, rng)
        variants = ("exact", "reencode", "flip")
        for k in range(eval_copies):
            task, key, pic, data = eval_images[int(rng.integers(len(eval_images)))]
            i = next(slots)
            v = variants[k % 3]
            images[i] = data if v == "exact" else apply_variant(render(pic), v, rng)
            lats[i] = latent(pic, v if v == "flip" else None)
            kinds[i], sources[i], tasks[i] = f"eval_{v}", key, task
    write_pool(root, n_shards, per_shard, uids, images, lats, rng)
    return pd.DataFrame({"uid": uids, "shard": np.arange(n) // per_shard, "kind": kinds, "source": sources,
                         "eval_task": tasks})  # fmt: skip


def write_pool(root: Path, n_shards: int, per_shard: int, uids: list[str], images: list, lats: list,
               rng: np.random.Generator) -> None:  # fmt: skip
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "embeddings" / "toy").mkdir(parents=True, exist_ok=True)
    from siftbench.benchmark.core.uids import hex_to_uids

    for s in range(n_shards):
        rows, emb = [], []
        with tarfile.open(root / "shards" / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                data = images[i] if isinstance(images[i], bytes) else png(images[i])
                key = f"{s:04d}{j:04d}"
                text = f"picture {i}"
                for ext, payload in (("png", data), ("txt", text.encode()),
                                     ("json", json.dumps({"uid": uids[i], "key": key}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                rows.append({"uid": uids[i], "text": text, "original_width": 32, "original_height": 32,
                             "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
                emb.append(embed(lats[i], rng))
        pd.DataFrame(rows).to_parquet(root / "metadata" / f"{s:08d}.parquet", index=False)
        shard_uids = hex_to_uids([r["uid"] for r in rows])
        np.savez(root / "embeddings" / "toy" / f"{s:08d}.npz", uid=shard_uids,
                 image=np.asarray(emb, dtype=np.float16))  # fmt: skip


def write_eval(root: Path, per_task: int, rng: np.random.Generator) -> list[tuple[str, str, dict, bytes]]:
    """Two tasks in clip_benchmark's layout; returns (task, key, picture, png bytes) per eval image."""
    out = []
    for task in ("colours", "shapes"):
        folder = root / task / "test"
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / "0.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in range(per_task):
                pic = picture(rng)
                data = png(render(pic))
                label = str(SHAPES.index(pic["shape"]) if task == "shapes" else list(COLOURS).index(pic["colour"]))
                for ext, payload in (("png", data), ("cls", label.encode())):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                out.append((task, f"{task}/{k}", pic, data))
        (folder / "nshards.txt").write_text("1\n")
    return out
