"""What the world contains, decided before anything is drawn: one row of facts per sample.

A row holds a picture's render parameters, its caption, its metadata and its ground truth. The pool,
the reference set and every eval task draw from disjoint random streams of the one seed, so changing
the eval size never moves a pool sample. Copies (duplicates, eval copies) copy their source's render
parameters, which is all it takes to reproduce the source's pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .captions import (
    BACKGROUND_WORDS,
    MIRRORED,
    fill,
    foreign_caption,
    object_word,
    position_phrase,
    size_word,
    spam_caption,
    url,
)
from .config import DEFECTS, knob

Row = dict[str, Any]

# Stream ids: SeedSequence([seed, stream, ...]) gives independent generators per part of the world.
STREAM_CONCEPTS, STREAM_POOL, STREAM_REFERENCE, STREAM_EVAL = 0, 1, 2, 3

PICTURE_KEYS = (
    "kind",
    "shape",
    "digit",
    "colour",
    "cx",
    "cy",
    "scale",
    "angle",
    "background",
    "noise_seed",
    "jitter",
    "shading",
    "blank",
    "source",
    "sklearn_index",
    "width",
    "height",
    "variant",
    "variant_seed",
)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def shape_weights(cfg: dict[str, Any]) -> dict[str, float]:
    """Zipf weights over shapes; which shapes are rare is a random permutation drawn from the seed."""
    shapes = cfg["concepts"]["shapes"]
    ranks = rng_for(cfg["seed"], STREAM_CONCEPTS).permutation(len(shapes))
    raw = 1.0 / (ranks + 1.0) ** cfg["concepts"]["zipf_exponent"]
    tail = ranks >= len(shapes) - cfg["eval"]["tail_shapes"]
    raw = np.where(tail, raw * knob(cfg, "concepts", "tail_weight"), raw)
    return {s: float(w) for s, w in zip(shapes, raw / raw.sum(), strict=True)}


def tail_shapes(cfg: dict[str, Any]) -> list[str]:
    weights = shape_weights(cfg)
    return sorted(weights, key=lambda s: (weights[s], s))[: cfg["eval"]["tail_shapes"]]


def concept(row: Row) -> str:
    return f"digit {row['digit']}" if row["kind"] == "digit" else f"{row['colour']} {row['shape']}"


# -- pictures ------------------------------------------------------------------------------------------


def picture(
    rng: np.random.Generator,
    cfg: dict[str, Any],
    *,
    shape: str | None = None,
    digit: int | None = None,
    colour: str | None = None,
) -> Row:
    """Render parameters of one picture; the concept comes from the caller, the rest is random."""
    c = cfg["concepts"]
    lo, hi = c["scale"]
    scale = float(rng.uniform(lo, hi))
    margin = min(scale, 0.45)  # keep most of the object inside the frame
    return {
        "kind": "digit" if digit is not None else "shape",
        "shape": shape,
        "digit": digit,
        "colour": colour if colour is not None else str(rng.choice(c["colours"])),
        "cx": float(rng.uniform(margin, 1 - margin)),
        "cy": float(rng.uniform(margin, 1 - margin)),
        "scale": scale,
        "angle": float(rng.uniform(-c["rotation"], c["rotation"])),
        "background": str(rng.choice(c["backgrounds"])),
        "noise_seed": int(rng.integers(2**63)),
        "jitter": float(c["colour_jitter"]),
        "shading": float(c["shading"]),
        "blank": False,
        "source": "synthetic",
        "sklearn_index": None,
        "width": cfg["image_size"],
        "height": cfg["image_size"],
        "variant": None,
        "variant_seed": None,
    }


def random_pictures(
    rng: np.random.Generator, cfg: dict[str, Any], n: int, balanced: bool = False
) -> list[Row]:
    """n pictures from the world's concept distribution: digits at digit_fraction, shapes Zipf (or uniform)."""
    c = cfg["concepts"]
    weights = shape_weights(cfg)
    shapes = list(weights)
    p = None if balanced else np.array([weights[s] for s in shapes])
    is_digit = rng.random(n) < (c["digit_fraction"] if c["digits"] else 0.0)
    shape_idx = rng.choice(len(shapes), size=n, p=p)
    digits = rng.integers(0, 10, size=n)
    return [
        picture(rng, cfg, digit=int(d)) if dig else picture(rng, cfg, shape=shapes[s])
        for dig, s, d in zip(is_digit, shape_idx, digits, strict=True)
    ]


# -- captions ------------------------------------------------------------------------------------------


def caption(
    pic: Row,
    cfg: dict[str, Any],
    rng: np.random.Generator,
    *,
    colour: str | None = None,
    thing: str | None = None,
    mirror: bool = False,
    template: str | None = None,
) -> str:
    """A clean English caption of ``pic``; ``colour``/``thing`` override a fact to plant a near miss."""
    if template is None:
        templates = cfg["captions"]["templates"]
        template = templates[int(rng.integers(len(templates)))]
    position = position_phrase(pic["cx"], pic["cy"])
    lo, hi = cfg["concepts"]["scale"]
    return fill(
        template,
        colour=colour or pic["colour"],
        shape=thing or _object_word(pic, cfg, rng),
        size=size_word(pic["scale"], lo, hi),
        position=MIRRORED[position] if mirror else position,
        background=BACKGROUND_WORDS[pic["background"]],
    )


def _object_word(pic: Row, cfg: dict[str, Any], rng: np.random.Generator, digit: int | None = None) -> str:
    names = cfg["captions"]["digit_names"]
    name = names[int(rng.integers(len(names)))]
    return object_word(pic["kind"], pic["shape"], pic["digit"] if digit is None else digit, name)


def _wrong_object(pic: Row, cfg: dict[str, Any], rng: np.random.Generator) -> str:
    if pic["kind"] == "digit":
        return _object_word(pic, cfg, rng, digit=int(rng.choice([d for d in range(10) if d != pic["digit"]])))
    return _pick_name(cfg, rng, [s for s in cfg["concepts"]["shapes"] if s != pic["shape"]])


def _look_alike(pic: Row, cfg: dict[str, Any], rng: np.random.Generator) -> str:
    key = str(pic["digit"]) if pic["kind"] == "digit" else pic["shape"]
    options = cfg["captions"]["look_alikes"].get(key)
    if not options:
        return _wrong_object(pic, cfg, rng)
    word = _pick_name(cfg, rng, options) if pic["kind"] == "shape" else str(rng.choice(options))
    return _object_word(pic, cfg, rng, digit=int(word)) if pic["kind"] == "digit" and word.isdigit() else word


def _pick_name(cfg: dict[str, Any], rng: np.random.Generator, names: list[str]) -> str:
    """A wrong name for a picture: uniform, or (wrong_names: frequency) as often as the pool shows that shape.
    Words that are not pool shapes (oval, box) weigh as an average shape. Uniform draws exactly as before."""
    if knob(cfg, "defects", "wrong_names") == "uniform":
        return str(rng.choice(names))
    weights = shape_weights(cfg)
    p = np.array([weights.get(n, 1 / len(weights)) for n in names])
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


# -- metadata ------------------------------------------------------------------------------------------


def _original_size(rng: np.random.Generator) -> tuple[int, int]:
    """A plausible pre-download size: the stored 32 px image is a centre crop of a 256-1024 px original."""
    w = int(rng.integers(256, 1025))
    h = int(np.clip(round(w * np.exp(rng.uniform(-0.45, 0.45))), 256, 1024))
    return w, h


def _uids(rng: np.random.Generator, n: int) -> list[str]:
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16)
    return [bytes(r).hex() for r in raw]


def _sample(pic: Row, uid: str, text: str, rng: np.random.Generator) -> Row:
    w, h = _original_size(rng)
    return {
        **pic,
        "uid": uid,
        "text": text,
        "original_width": w,
        "original_height": h,
        "defect": "clean",
        "defect_variant": None,
        "language": "en",
        "source_uid": None,
        "eval_task": None,
        "eval_key": None,
    }


def reference_rows(cfg: dict[str, Any]) -> list[Row]:
    """Clean pairs only, from the pool's concept distribution (uniform shapes if reference_balanced)."""
    rng = rng_for(cfg["seed"], STREAM_REFERENCE)
    pics = random_pictures(rng, cfg, cfg["reference_size"], balanced=cfg["reference_balanced"])
    uids = _uids(rng, len(pics))
    rows = [_sample(p, u, caption(p, cfg, rng), rng) for p, u in zip(pics, uids, strict=True)]
    for row in rows:
        row["url"] = url(rng, row["text"])
    return rows


def pool_rows(cfg: dict[str, Any], eval_sets: dict[str, list[Row]]) -> list[Row]:
    """The candidate pool: pictures with clean captions, then exact shares of rows turned into defects."""
    rng = rng_for(cfg["seed"], STREAM_POOL)
    n = cfg["pool_size"]
    pics = random_pictures(rng, cfg, n)
    rows = [_sample(p, u, caption(p, cfg, rng), rng) for p, u in zip(pics, _uids(rng, n), strict=True)]

    order = rng.permutation(n)
    start = 0
    planted: dict[str, np.ndarray] = {}
    for defect in DEFECTS:
        count = round(cfg["defects"][defect] * n)
        planted[defect] = np.sort(order[start : start + count])
        start += count
    clean = np.sort(order[start:])
    if len(clean) == 0 and any(len(v) for v in planted.values()):
        raise ValueError("no clean rows left to copy from; lower the defect rates")

    d = cfg["defects"]
    for i in planted["misaligned"]:
        j = _caption_donor(rows, clean, i, rng)
        rows[i].update(text=rows[j]["text"], source_uid=rows[j]["uid"])
    for i in planted["wrong_colour"]:
        other = str(rng.choice([c for c in cfg["concepts"]["colours"] if c != rows[i]["colour"]]))
        rows[i]["text"] = caption(rows[i], cfg, rng, colour=other)
    for i in planted["wrong_shape"]:
        rows[i]["text"] = caption(rows[i], cfg, rng, thing=_wrong_object(rows[i], cfg, rng))
    for i in planted["near_synonym"]:
        rows[i]["text"] = caption(rows[i], cfg, rng, thing=_look_alike(rows[i], cfg, rng))
    for i in planted["spam"]:
        thing = f"{rows[i]['colour']} {_object_word(rows[i], cfg, rng)}"
        rows[i]["text"] = spam_caption(rng, thing)
    for k, i in enumerate(planted["non_english"]):
        language = d["non_english_languages"][k % len(d["non_english_languages"])]
        r = rows[i]
        r.update(
            language=language,
            defect_variant=language,
            text=foreign_caption(rng, language, r["kind"], r["shape"], r["digit"], r["colour"]),
        )
    for i in planted["exact_duplicate"]:
        j = int(rng.choice(clean))
        src = rows[j]
        rows[i].update({k: src[k] for k in (*PICTURE_KEYS, "text", "original_width", "original_height")})
        rows[i]["source_uid"] = src["uid"]
    for k, i in enumerate(planted["near_duplicate"]):
        src = rows[int(rng.choice(clean))]
        variant = d["near_duplicate_variants"][k % len(d["near_duplicate_variants"])]
        rows[i].update({key: src[key] for key in PICTURE_KEYS})
        rows[i].update(
            variant=variant,
            variant_seed=int(rng.integers(2**63)),
            defect_variant=variant,
            source_uid=src["uid"],
            text=caption(src, cfg, rng, mirror=variant == "flip"),
        )
    for k, i in enumerate(planted["degenerate"]):
        _degenerate(rows[i], d["degenerate_variants"][k % len(d["degenerate_variants"])], cfg, rng)
    # Every eval image is equally likely to be copied, so small tasks are not the most contaminated.
    eval_images = [(task, row) for task, task_rows in eval_sets.items() for row in task_rows]
    for k, i in enumerate(planted["eval_copy"]):
        task, src = eval_images[int(rng.integers(len(eval_images)))]
        variant = d["eval_copy_variants"][k % len(d["eval_copy_variants"])]
        rows[i].update({key: src[key] for key in PICTURE_KEYS})
        rows[i].update(
            variant=None if variant == "exact" else variant,
            variant_seed=int(rng.integers(2**63)),
            defect_variant=variant,
            eval_task=task,
            eval_key=src["key"],
            text=str(rng.choice(src["pool_captions"])),
        )

    for defect, idx in planted.items():
        for i in idx:
            rows[i]["defect"] = defect
    for row in rows:  # from the final caption, so a URL never tells what a replaced caption said
        row["url"] = url(rng, row["text"], spam=row["defect"] == "spam")
    return rows


def _caption_donor(rows: list[Row], clean: np.ndarray, i: int, rng: np.random.Generator) -> int:
    """A clean row showing another concept: with a long tail, a random caption often names the same one,
    and such a pair is not misaligned at all."""
    for _ in range(100):
        j = int(rng.choice(clean))
        if concept(rows[j]) != concept(rows[i]):
            break
    return j


def _degenerate(row: Row, variant: str, cfg: dict[str, Any], rng: np.random.Generator) -> None:
    size = cfg["image_size"]
    row["defect_variant"] = variant
    if variant == "tiny":  # below every sensible minimum size; stored as small as it was found
        w, h = (int(v) for v in rng.integers(8, 17, size=2))
        row.update(width=w, height=h, original_width=w, original_height=h)
    elif variant == "extreme_aspect":  # a banner or a strip: the object shrinks to a few pixels
        ratio = float(rng.uniform(3.5, 8.0))
        short = int(rng.integers(150, 400))
        thin = max(3, round(size / ratio))
        if rng.random() < 0.5:
            row.update(width=size, height=thin, original_width=round(short * ratio), original_height=short)
        else:
            row.update(width=thin, height=size, original_width=short, original_height=round(short * ratio))
    else:  # blank: a solid colour under a caption that promises an object
        row["blank"] = True
