"""Kill-and-resume check: a run SIGKILLed midway and resumed must train exactly what an uninterrupted run does.

    python scripts/resume_check.py SHARDS --scale tiny --out runs/resume-check

1. trains ``scale`` on ``SHARDS`` uninterrupted (or reads an existing finished run: ``--reference``);
2. trains it again as `siftbench train` in its own process group, and SIGKILLs the whole group (CLI,
   open_clip_train, loader workers) once the first checkpoint is written and the next epoch has made
   progress, so the kill loses work in flight, as a crash or a preemption would;
3. resumes it (`--resume latest`), and compares samples seen per epoch and the optimizer step count
   stored in each final checkpoint (AdamW's per-parameter ``step``), optionally the eval results too
   (``--suite``/``--eval-root``; not bitwise equal: the resampled shard order after a resume differs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import StageError
from siftbench.benchmark.core.scales import load_scale
from siftbench.benchmark.stages.evaluate import evaluate_checkpoint
from siftbench.benchmark.stages.train import RUN_NAME, train
from siftbench.eval_suite import load_suite, summarize


def optimizer_steps(checkpoint: Path) -> int:
    """Optimizer steps taken, from AdamW's state in an open_clip_train checkpoint."""
    import torch  # heavy, optional (siftbench[ml])

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["optimizer"]["state"]
    return int(max(float(s["step"]) for s in state.values()))


def kill_and_resume(shards: Path, scale_name: str, out: Path, seed: int = 0, reference: Path | None = None,
                    timeout_s: float = 3600, suite: str | None = None, eval_root: Path | None = None) -> dict[str, Any]:
    """Run the check; return the comparison (also written to ``out/resume_check.json``)."""
    scale = load_scale(scale_name)
    if scale["epochs"] < 2:
        raise StageError(f"scale {scale_name!r} checkpoints once (epochs=1): there is no midway checkpoint to resume")
    out = Path(out).resolve()
    reference = Path(reference).resolve() if reference is not None else out / "uninterrupted"
    ref_checkpoint = train(shards, scale, reference, seed=seed, progress=False)  # returns at once if finished

    killed_dir = out / "killed"
    command = [sys.executable, "-m", "siftbench.benchmark.experiment.cli", "train", str(shards), "--scale", scale_name,
               "--out", str(killed_dir), "--seed", str(seed)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_at = _wait_for_midway(proc, killed_dir, started + timeout_s)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, open_clip_train and its loader workers, all at once
    proc.wait()
    resumed = train(shards, scale, killed_dir, seed=seed, progress=False)

    ref_stats = json.loads((reference / "train_stats.json").read_text())
    stats = json.loads((killed_dir / "train_stats.json").read_text())
    result: dict[str, Any] = {
        "scale": scale_name,
        "killed_at": killed_at,
        "resumed_from_epoch": stats["resumed_from_epoch"],
        "samples_seen": {"uninterrupted": ref_stats["samples_seen_actual"], "resumed": stats["samples_seen_actual"]},
        "optimizer_steps": {"uninterrupted": optimizer_steps(ref_checkpoint), "resumed": optimizer_steps(resumed)},
        "expected_steps": scale["samples_seen"] // scale["global_batch"],
    }
    result["ok"] = (result["samples_seen"]["resumed"] == result["samples_seen"]["uninterrupted"] == scale["samples_seen"]
                    and result["optimizer_steps"]["resumed"] == result["optimizer_steps"]["uninterrupted"]
                    == result["expected_steps"])
    if suite is not None:
        loaded = load_suite(suite, root=eval_root) if eval_root is not None else None
        if loaded is None:
            raise StageError("--suite needs --eval-root (the folder holding the suite's datasets)")
        averages = {name: summarize(evaluate_checkpoint(scale["model"], ckpt, loaded, progress=False))["average"]
                    for name, ckpt in (("uninterrupted", ref_checkpoint), ("resumed", resumed))}
        result["eval_average"] = averages
    (out / "resume_check.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/")


def _wait_for_midway(proc: subprocess.Popen, run_dir: Path, deadline: float) -> dict[str, int]:
    """Block until epoch 1's checkpoint exists and epoch 2 has logged progress; return where that was."""
    log = run_dir / RUN_NAME / "out.log"
    first = run_dir / RUN_NAME / "checkpoints" / "epoch_1.pt"
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise StageError(f"the run to be killed ended by itself (exit {proc.returncode}) before midway; "
                             f"see {run_dir / 'train.log'}")
        if first.exists() and log.exists():
            progress = [(int(e), int(n)) for e, n in _PROGRESS.findall(log.read_text(errors="replace"))]
            later = [(e, n) for e, n in progress if e >= 1 and n > 0]
            if later:
                return {"epoch": later[-1][0], "samples_into_epoch": later[-1][1]}
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise StageError(f"no midway point within the timeout; see {run_dir / 'train.log'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resume_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", type=Path, help="training shards (reshard's output)")
    parser.add_argument("--scale", default="toy")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, help="a finished uninterrupted run of the same scale/seed/shards")
    parser.add_argument("--suite", help="also compare eval averages on this suite (e.g. world)")
    parser.add_argument("--eval-root", type=Path)
    args = parser.parse_args(argv)
    result = kill_and_resume(args.shards, args.scale, args.out, seed=args.seed, reference=args.reference,
                             suite=args.suite, eval_root=args.eval_root)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1
