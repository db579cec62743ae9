"""The world's eval tasks: clean, balanced test sets drawn from streams the pool never uses.

Each task is written in clip_benchmark's webdataset layout (see layout.py), so the harness reads the
world's tasks and real DataComp eval sets with one reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .captions import fix_articles
from .render import sklearn_digits
from .sampling import PICTURE_KEYS, STREAM_EVAL, Row, caption, picture, random_pictures, rng_for, tail_shapes

# Fixed stream per task name, so turning one task off never changes another task's images.
TASK_STREAMS = {
    "shapes": 0,
    "colours": 1,
    "shape_colour": 2,
    "tail_shapes": 3,
    "retrieval": 4,
    "digits_real": 5,
    "digits": 6,
}

# No "a" right before {c}: the evaluator cannot turn "a orange" into "an orange" the way captions do.
_SHAPE_TEMPLATES = (
    "the {c}.",
    "a photo of the {c}.",
    "a drawing of the {c}.",
    "{c} icon.",
    "clipart of the {c}.",
)
_TEMPLATES = {
    "shapes": _SHAPE_TEMPLATES,
    "colours": ("something {c}.", "the colour {c}.", "{c} shape.", "a shape coloured {c}.", "it is {c}."),
    "shape_colour": _SHAPE_TEMPLATES,
    "tail_shapes": _SHAPE_TEMPLATES,
    "digits_real": ("the digit {c}.", "the number {c}.", "a handwritten {c}.", "a photo of the digit {c}."),
    "digits": ("the digit {c}.", "the number {c}.", "a drawing of the digit {c}.", "{c} icon."),
}
_DESCRIPTIONS = {
    "shapes": "classify the shape (any colour)",
    "colours": "classify the colour (any shape)",
    "shape_colour": "fine-grained: every shape x colour pair is a class",
    "tail_shapes": "classify among the pool's rarest shapes only",
    "retrieval": "image <-> caption retrieval; captions name size, position and background",
    "digits_real": "scikit-learn's real handwritten digits (8x8, upsampled): rendered -> real transfer",
    "digits": "classify the rendered stroke digit (the pool's own kind of digit image)",
}


@dataclass
class EvalSet:
    name: str
    type: str  # zeroshot_classification | zeroshot_retrieval
    main_metric: str
    rows: list[Row]  # each has key, and label (classification) or captions (retrieval)
    classnames: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = ()

    @property
    def chance(self) -> float:
        # Balanced classes: acc1 and mean per-class recall are 1/K. Retrieval recall@1 at random is 1/N
        # both ways (an image with k of the M captions is hit with probability k/M; k averages M/N).
        return 1.0 / (len(self.classnames) if self.classnames else len(self.rows))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "main_metric": self.main_metric,
            "num_classes": len(self.classnames) or None,
            "num_samples": len(self.rows),
            "chance": self.chance,
            "description": _DESCRIPTIONS[self.name],
        }
        if self.type == "zeroshot_retrieval":
            out["num_captions"] = sum(len(r["captions"]) for r in self.rows)
        return out


def eval_sets(cfg: dict[str, Any]) -> dict[str, EvalSet]:
    """Every enabled eval task of the world, with its rows (pictures + labels or captions)."""
    shapes = list(cfg["concepts"]["shapes"])
    colours = list(cfg["concepts"]["colours"])
    tasks = {
        "shapes": _classification(cfg, "shapes", shapes, lambda rng, c: picture(rng, cfg, shape=c)),
        "colours": _classification(
            cfg, "colours", colours, lambda rng, c: picture(rng, cfg, shape=str(rng.choice(shapes)), colour=c)
        ),
        "shape_colour": _classification(
            cfg,
            "shape_colour",
            [f"{c} {s}" for s in shapes for c in colours],
            lambda rng, c: picture(rng, cfg, colour=c.split(" ", 1)[0], shape=c.split(" ", 1)[1]),
            main_metric="mean_per_class_recall",
        ),
        # Few classes, so more images per class: the tail score's seed noise must stay well below its gap.
        "tail_shapes": _classification(
            cfg, "tail_shapes", tail_shapes(cfg), lambda rng, c: picture(rng, cfg, shape=c),
            per_class=cfg["eval"]["tail_per_class"],
        ),
        "retrieval": _retrieval(cfg),
    }
    if cfg["concepts"]["digits"] and cfg["eval"]["digits"]:
        tasks["digits"] = _classification(
            cfg, "digits", [str(d) for d in range(10)], lambda rng, c: picture(rng, cfg, digit=int(c))
        )
    if cfg["concepts"]["digits"] and cfg["eval"]["digits_real"]:
        tasks["digits_real"] = _digits_real(cfg)
    return tasks


def _classification(cfg, name, classnames, draw, main_metric: str = "acc1", per_class: int | None = None) -> EvalSet:
    rng = rng_for(cfg["seed"], STREAM_EVAL, TASK_STREAMS[name])
    rows = []
    for label, cls in enumerate(classnames):
        for _ in range(per_class or cfg["eval"]["per_class"]):
            rows.append({**draw(rng, cls), "label": label, "classname": cls})
    return _finish(name, "zeroshot_classification", main_metric, rows, rng, classnames, _TEMPLATES[name])


def _retrieval(cfg: dict[str, Any]) -> EvalSet:
    rng = rng_for(cfg["seed"], STREAM_EVAL, TASK_STREAMS["retrieval"])
    templates = cfg["captions"]["templates"]
    # Captions with at least two details (size, position, background) single an image out of ~1000.
    slots = ("{size}", "{position}", "{background}")
    detailed = [t for t in templates if sum(s in t for s in slots) >= 2] or templates
    rows = []
    for pic in random_pictures(rng, cfg, cfg["eval"]["retrieval_images"], balanced=True):
        chosen = rng.choice(
            len(detailed), size=min(len(detailed), 1 + int(rng.random() < 0.5)), replace=False
        )
        rows.append({**pic, "captions": [caption(pic, cfg, rng, template=detailed[int(i)]) for i in chosen]})
    return _finish("retrieval", "zeroshot_retrieval", "mean_recall@1", rows, rng)


def _digits_real(cfg: dict[str, Any]) -> EvalSet:
    rng = rng_for(cfg["seed"], STREAM_EVAL, TASK_STREAMS["digits_real"])
    _, targets = sklearn_digits()
    blank = dict.fromkeys(PICTURE_KEYS)
    rows = []
    for digit in range(10):
        candidates = np.flatnonzero(targets == digit)
        take = rng.choice(candidates, size=min(cfg["eval"]["per_class"], len(candidates)), replace=False)
        for index in np.sort(take):
            rows.append(
                {
                    **blank,
                    "kind": "digit",
                    "digit": digit,
                    "source": "sklearn",
                    "sklearn_index": int(index),
                    "width": cfg["image_size"],
                    "height": cfg["image_size"],
                    "blank": False,
                    "label": digit,
                    "classname": str(digit),
                }
            )
    names = [str(d) for d in range(10)]
    return _finish(
        "digits_real", "zeroshot_classification", "acc1", rows, rng, names, _TEMPLATES["digits_real"]
    )


def _finish(name, kind, main_metric, rows, rng, classnames=(), templates=()) -> EvalSet:
    """Shuffle (so tars are not sorted by class), key the rows, and note what a pool copy would say."""
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for idx, row in enumerate(rows):
        row["key"] = f"s{idx:07d}"
        if "captions" in row:
            row["pool_captions"] = row["captions"]
        else:
            row["pool_captions"] = [fix_articles(t.replace("{c}", row["classname"])) for t in templates]
    return EvalSet(name, kind, main_metric, rows, list(classnames), tuple(templates))
