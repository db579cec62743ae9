"""Scales match DataComp's table; training runs the real open_clip_train at a fixed budget, resumes, and
turns open_clip_train's silent failures into errors."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.errors import ConfigError, StageError
from siftbench.benchmark.core.scales import (
    available_scales,
    check_scale,
    load_scale,
    resolved_scale,
    scale_table,
)
from siftbench.benchmark.core.uids import hex_to_uids
from siftbench.benchmark.stages import train as train_mod
from siftbench.benchmark.stages.reshard import reshard
from siftbench.benchmark.stages.train import train

# ANCHORS.md's DataComp table, typed out again on purpose: a config that drifts from it fails here.
# scale: (samples seen = pool size, model, global batch, lr, warmup, beta2)
DATACOMP = {
    "debug": (128_000, "ViT-B-32", 1024, 1e-4, 500, 0.98),
    "small": (12_800_000, "ViT-B-32", 4096, 5e-4, 500, 0.98),
    "medium": (128_000_000, "ViT-B-32", 4096, 5e-4, 500, 0.98),
    "large": (1_280_000_000, "ViT-B-16", 8192, 5e-4, 500, 0.98),
    "xlarge": (12_800_000_000, "ViT-L-14", 90112, 1e-3, 10000, 0.95),
}


@pytest.mark.parametrize("name", sorted(DATACOMP))
def test_datacomp_scales_match_the_anchor_table(name):
    samples, model, batch, lr, warmup, beta2 = DATACOMP[name]
    s = load_scale(name)
    assert (s["samples_seen"], s["model"], s["global_batch"], s["lr"], s["warmup"], s["beta2"]) == (
        samples, model, batch, lr, warmup, beta2)
    assert (s["beta1"], s["eps"], s["weight_decay"], s["schedule"], s["image_size"]) == (0.9, 1e-6, 0.2, "cosine", 224)
    assert s["dataset_resampled"] and s["local_loss"] and s["gather_with_grad"] and s["grad_checkpointing"]
    assert s["precision"] == "amp" and s["comparable"] is True and s["name"] == name


def test_cpu_scales_use_the_tiny_model_and_an_exact_budget():
    for name in ("toy", "tiny"):
        s = load_scale(name)
        assert s["model"] == "siftbench-tiny" and s["image_size"] == 32 and s["precision"] == "fp32"
        assert s["samples_seen"] % (s["epochs"] * s["global_batch"]) == 0, "whole steps in every epoch"
        assert s["comparable"] is True
    assert load_scale("toy")["samples_seen"] <= 2048 and load_scale("toy")["global_batch"] == 64
    assert 80_000 <= load_scale("tiny")["samples_seen"] <= 120_000 and load_scale("tiny")["global_batch"] == 128
    assert {*DATACOMP, "toy", "tiny"} <= set(available_scales())
    table = scale_table()
    assert list(table["scale"]) == available_scales_by_budget() and list(table["scale"])[-1] == "xlarge"
    assert table.set_index("scale").loc["small", "steps"] == 3125


def test_overriding_a_benchmark_hyperparameter_needs_comparable_false():
    s = dict(load_scale("small"), lr=1e-3)
    with pytest.raises(ConfigError, match=r"lr=0.001 \(scale 'small' fixes 0.0005\).*comparable=false"):
        resolved_scale(s)
    assert check_scale(dict(s, comparable=False), "small") == ["lr=0.001 (scale 'small' fixes 0.0005)"]
    assert resolved_scale(dict(s, comparable=False))["lr"] == 1e-3
    # How the budget runs is free: loader workers, checkpoints, precision.
    assert check_scale(dict(load_scale("small"), workers=16, epochs=8, precision="fp32"), "small") == []
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        resolved_scale(dict(load_scale("tiny"), learning_rate=0.1))
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        load_scale("tinny")


def available_scales_by_budget() -> list[str]:
    return sorted(available_scales(), key=lambda n: (load_scale(n)["samples_seen"], n))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    uids = make_tiny_pool(root / "pool", n_shards=2, per_shard=64, seed=0)
    reshard(root / "pool", hex_to_uids(uids), root / "shards", seed=0, samples_per_shard=32, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def toy_run(shards) -> tuple[Path, Path]:
    out = shards.parent / "run"
    checkpoint = train(shards, load_scale("toy"), out, seed=0, progress=False, keep_checkpoints=True)
    return out, checkpoint


def test_toy_run_trains_exactly_the_budget_and_its_checkpoint_loads(toy_run):
    from siftbench.benchmark.stages.models import load_model

    out, checkpoint = toy_run
    assert checkpoint == out / "siftbench" / "checkpoints" / "epoch_2.pt"
    model, _, _ = load_model("siftbench-tiny", checkpoint=checkpoint)
    assert model.visual.image_size == (32, 32)
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["samples_seen"] == stats["samples_seen_actual"] == 1536 == stats["samples_this_run"]
    assert stats["precision"] == "fp32" and stats["global_batch"] == 64 and stats["steps"] == 24
    assert stats["samples_per_s"] > 0 and stats["final_loss"] < 4.2  # log(64) = 4.16 at chance
    assert "Train Epoch: 1 [768/768" in (out / "train.log").read_text()
    clock = time.perf_counter()
    assert train(out.parent / "shards", load_scale("toy"), out, seed=0, progress=False) == checkpoint
    assert time.perf_counter() - clock < 5, "a finished run is not retrained"


def test_the_same_seed_trains_the_same_weights(toy_run, tmp_path):
    # open_clip_train's sample shuffle seeded itself from the clock; the launcher seeds it from --seed.
    import torch

    out, checkpoint = toy_run
    again = train(out.parent / "shards", load_scale("toy"), tmp_path / "again", seed=0, progress=False)
    first, second = (torch.load(c, map_location="cpu", weights_only=False)["state_dict"] for c in (checkpoint, again))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "same seed, different weights"


def test_an_interrupted_run_resumes_from_its_latest_checkpoint(toy_run, tmp_path):
    out, _ = toy_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / "siftbench" / "checkpoints" / "epoch_2.pt").unlink()  # killed during the second epoch
    (run / "train_stats.json").unlink()
    checkpoint = train(out.parent / "shards", load_scale("toy"), run, seed=0, progress=False)
    stats = json.loads((run / "train_stats.json").read_text())
    assert checkpoint.exists() and stats["resumed_from_epoch"] == 1
    assert stats["samples_this_run"] == 768 and stats["samples_seen_actual"] == 1536


def test_existing_or_different_runs_are_refused_before_training(toy_run):
    out, _ = toy_run
    shards = out.parent / "shards"
    with pytest.raises(StageError, match="already holds a training run"):
        train(shards, load_scale("toy"), out, seed=0, resume=False, progress=False)
    with pytest.raises(StageError, match="different seed"):
        train(shards, load_scale("toy"), out, seed=1, progress=False)
    with pytest.raises(StageError, match="min_shards=8"):
        train(shards, dict(load_scale("toy"), workers=8), out.parent / "other", seed=0, progress=False)
    with pytest.raises(ConfigError, match="does not split into 3 processes"):
        train(shards, load_scale("toy"), out.parent / "other", seed=0, nproc=3, progress=False)


def test_exit_0_without_a_checkpoint_is_a_failure(shards, tmp_path, monkeypatch):
    # What open_clip_train does when the run name exists: print, return -1, exit 0.
    (tmp_path / "fake_open_clip.py").write_text(
        "print('Error. Experiment already exists. Use --name {} to specify a new experiment.')\n")
    monkeypatch.setattr(train_mod, "LAUNCHER", "fake_open_clip")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(StageError, match=r"exited 0 but wrote no final checkpoint(.|\n)*Experiment already exists"):
        train(shards, load_scale("toy"), tmp_path / "run", seed=0, progress=False)


def test_launcher_exits_1_when_open_clip_train_refuses_to_start(tmp_path, monkeypatch):
    import open_clip_train.data
    import torch

    from siftbench.benchmark.stages.train.launcher import main

    # main() patches these process-wide; put them back for the rest of the session.
    monkeypatch.setattr(torch, "save", torch.save)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", torch.nn.parallel.DistributedDataParallel)
    monkeypatch.setattr(open_clip_train.data, "get_wds_dataset", open_clip_train.data.get_wds_dataset)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "out.log").write_text("")
    assert main(["--logs", str(tmp_path), "--name", "taken", "--device", "cpu"]) == 1


def test_loader_workers_share_exactly_the_epochs_batches():
    import torch
    import webdataset as wds

    from siftbench.benchmark.stages.train.launcher import ExactEpochPipeline

    # open_clip_train would give each of 3 workers ceil(7 / 3) = 3 batches: 9, not 7.
    dataset = wds.DataPipeline(lambda: iter(range(10_000))).with_epoch(3)
    dataset.__class__, dataset.exact_batches = ExactEpochPipeline, 7
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=3)
    assert len(list(loader)) == 7
    assert len(list(loader)) == 7, "and again next epoch"


def test_ddp_patch_accepts_cpu_device_ids(tmp_path, monkeypatch):
    import torch
    import torch.distributed as dist

    from siftbench.benchmark.stages.train.launcher import patch_ddp_on_cpu

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", torch.nn.parallel.DistributedDataParallel)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError):
            torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[torch.device("cpu")])
        patch_ddp_on_cpu()
        torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[torch.device("cpu")])
    finally:
        dist.destroy_process_group()


def test_two_processes_under_torchrun_on_cpu(shards, tmp_path):
    # 5 batches per epoch over 2 processes x 2 loader workers: exact only with the launcher's epoch patch.
    scale = dict(load_scale("toy"), samples_seen=640, workers=2, comparable=False)
    train(shards, scale, tmp_path / "run", seed=0, nproc=2, progress=False)
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["samples_seen_actual"] == 640 and stats["per_process_batch"] == 32


def test_throughput_benchmark_reports_both_rates(shards, capsys):
    from siftbench.benchmark.stages.train import benchmark_training_throughput

    # warm-up 2: the trainer logs every 2 steps, and the clock runs from the first point past step 2.
    result = benchmark_training_throughput(shards, load_scale("toy"), steps=4, warmup_steps=2)
    assert result["compute_only_samples_per_s"] > 0 and result["end_to_end_samples_per_s"] > 0
    assert result["data_wait_s_per_step"] is not None
    assert result["ratio"] == pytest.approx(result["end_to_end_samples_per_s"] / result["compute_only_samples_per_s"], rel=0.01)
    assert "compute-only" in capsys.readouterr().out


def test_sigkill_midway_then_resume_trains_what_an_uninterrupted_run_does(toy_run, tmp_path):
    from siftbench.benchmark.perf.resume_check import kill_and_resume, optimizer_steps

    out, checkpoint = toy_run
    result = kill_and_resume(out.parent / "shards", "toy", tmp_path / "check", reference=out, timeout_s=300)
    assert result["killed_at"]["epoch"] == 1 and result["resumed_from_epoch"] == 1  # killed in the 2nd epoch
    assert result["samples_seen"] == {"uninterrupted": 1536, "resumed": 1536}
    assert result["optimizer_steps"] == {"uninterrupted": 24, "resumed": 24} == {k: result["expected_steps"] for k in
                                                                                ("uninterrupted", "resumed")}
    assert result["ok"] and optimizer_steps(checkpoint) == 24
    assert json.loads((tmp_path / "check" / "resume_check.json").read_text())["ok"] is True


def test_uint8_loader_gives_the_model_what_open_clips_train_transform_gives():
    """The launcher's split of ToTensor + Normalize: uint8 in the loader worker, floats on the device."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from siftbench.benchmark.stages.train.launcher import UInt8Normalize

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 40), (50, 64))]
    for size in (32, 224):
        transform = open_clip.image_transform(size, is_train=True)
        uint8_transform, normalize = UInt8Normalize.split(transform)
        for picture in pictures:
            torch.manual_seed(1)
            want = transform(picture)
            torch.manual_seed(1)  # the same RandomResizedCrop draw
            pixels = uint8_transform(picture)
            assert pixels.dtype == torch.uint8
            (got,) = normalize(None, (pixels[None],))
            assert got.dtype == want.dtype and torch.equal(got[0], want)
        assert normalize(None, (want[None],)) is None  # floats pass through untouched
    # A transform that does not end in ToTensor + Normalize stays as open_clip built it.
    from torchvision.transforms import Compose, RandomErasing

    assert UInt8Normalize.split(Compose([*transform.transforms, RandomErasing()])) is None
