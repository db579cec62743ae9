"""Re-evaluation through the harness itself: a real checkpoint, the real evaluator and the world suite.

The eval datasets are small clip_benchmark folders written here, placed where the embedded world keeps
them (``<world>/eval`` beside ``<world>/pool``), so submit finds them from the verified pool. Skipped only
while ``siftbench.benchmark.stages.evaluate`` cannot be imported; it needs the ML extra (torch, open_clip).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from leaderboard_fixtures import (
    edit_results,
    fixture_check_scale,
    make_pool,
    make_run,
    read_results,
    set_score,
    write_results,
)

from siftbench.leaderboard import submit
from siftbench.leaderboard.validate import SubmissionRefused

pytest.importorskip("siftbench.benchmark.stages.evaluate")


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _write_task(folder: Path, samples: list[tuple[str, bytes, str]], classnames: list[str] | None) -> None:
    (folder / "test").mkdir(parents=True)
    if classnames is None:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    else:
        (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
        (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n{c}\n")
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for key, image, target in samples:
            for name, data in (
                (f"{key}.png", image),
                (f"{key}.{'txt' if classnames is None else 'cls'}", target),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data.encode() if isinstance(data, str) else data)
                tar.addfile(info, io.BytesIO(data.encode() if isinstance(data, str) else data))
    (folder / "test" / "nshards.txt").write_text("1\n")


def write_world_suite(eval_root: Path) -> None:
    """Every task of configs/eval/world.yaml, a few images each (scores are noise; they must reproduce)."""
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    classification = {"shapes": ["circle", "square", "triangle"], "colours": list(colours),
                      "shape_colour": ["red circle", "blue square", "green triangle"],
                      "tail_shapes": ["star", "cross"], "digits": [str(d) for d in range(10)],
                      "digits_real": [str(d) for d in range(10)]}  # fmt: skip
    for t, (task, names) in enumerate(classification.items()):
        samples = [(f"{i:04d}", _png(list(colours.values())[i % 3], 100 * t + i), str(i % len(names)))
                   for i in range(12)]  # fmt: skip
        _write_task(eval_root / task, samples, names)
    captions = [f"a {c} shape\na {c} thing" for c in colours]
    _write_task(eval_root / "retrieval", [(f"{i:04d}", _png(rgb, i), captions[i])
                                          for i, rgb in enumerate(colours.values())], None)  # fmt: skip


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A run folder whose results.json the real evaluator wrote for a real (randomly initialised) model."""
    import open_clip
    import torch

    from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
    from siftbench.benchmark.stages.models import register_model_configs
    from siftbench.eval_suite import load_suite

    tmp = tmp_path_factory.mktemp("reeval")
    pool = make_pool(tmp / "world" / "pool")
    write_world_suite(tmp / "world" / "eval")
    run = make_run(tmp / "runs", pool, "real", 0)
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("siftbench-tiny")
    torch.save({"state_dict": model.state_dict()}, run / "checkpoints" / "final.pt")
    suite = load_suite("world", root=tmp / "world" / "eval")
    tasks = evaluate_checkpoint("siftbench-tiny", run / "checkpoints" / "final.pt", suite, progress=False)
    results = read_results(run)
    tasks = json.loads(json.dumps(tasks))  # as results.json stores them
    results.update(suite=suite.identity(), tasks=tasks)
    results["average"] = sum(t["score"] for t in tasks.values()) / len(tasks)
    write_results(run, results)
    return run, pool


def test_the_harness_reevaluates_a_real_checkpoint(real_run, tmp_path):
    run, pool = real_run
    result = submit([run], "real", "filtering", tmp_path / "lb.sqlite", pool, check_scale=fixture_check_scale)
    assert result.added == [str(run)]
    assert not any("not re-evaluated" in n for n in result.notes)


def test_the_harness_refuses_scores_its_checkpoint_does_not_give(real_run, tmp_path):
    run, pool = real_run
    doctored = tmp_path / "doctored"
    import shutil

    shutil.copytree(run, doctored)
    edit_results(doctored, lambda r: set_score(r, "shapes", min(1.0, r["tasks"]["shapes"]["score"] + 0.25)))
    with pytest.raises(SubmissionRefused) as info:
        submit([doctored], "real", "filtering", tmp_path / "lb.sqlite", pool, check_scale=fixture_check_scale)
    assert info.value.rule == "reevaluation" and "shapes: submitted" in info.value.problem
