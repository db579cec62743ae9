"""train: open_clip_train at a fixed scale, as a subprocess, on the shards reshard wrote.

open_clip_train owns its argv, logging and working directory, and it reports some failures by
exiting 0, so it runs in its own process (stages/train/launcher.py) and this module checks what
it left behind: a run that exits 0 without its final checkpoint is a failure.

Layout of ``out_dir``::

    train.log                       everything the trainer printed (appended per invocation)
    train_config.json               what this run trains (a resume with different values is refused)
    train_stats.json                resolved hyperparameters, samples seen, wall time, samples/s
    siftbench/out.log, params.txt   open_clip_train's own log and arguments
    siftbench/checkpoints/epoch_N.pt
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from siftbench.benchmark.core.atomic import write_json
from siftbench.benchmark.core.errors import ConfigError, StageError
from siftbench.benchmark.core.progress import progress_bar
from siftbench.benchmark.core.scales import load_scale, typed_scale
from siftbench.benchmark.core.versions import library_versions
from siftbench.benchmark.stages.models import MODEL_CONFIG_DIR, register_model_configs

RUN_NAME = "siftbench"
LAUNCHER = "siftbench.benchmark.stages.train.launcher"

_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\s*\d+%\)\]")
_LOSS = re.compile(r"\bLoss: ([0-9.eE+-]+)")
_RESUMED = re.compile(r"=> resuming checkpoint .* \(epoch (\d+)\)")


def train(
    shards_dir: Path,
    scale: dict[str, Any],
    out_dir: Path,
    seed: int,
    device: str = "cpu",
    nproc: int = 1,
    resume: bool = True,
    progress: bool = True,
    *,
    accum_freq: int = 1,
    keep_checkpoints: bool = False,
    log_every_n_steps: int | None = None,
) -> Path:
    """Train the scale's model on ``shards_dir/*.tar`` for exactly the scale's samples seen; return the final checkpoint.

    ``nproc > 1`` runs under torchrun (gloo on CPU); ``accum_freq`` splits each process's batch into
    that many micro-batches (open_clip's accumulation keeps every sample's negatives = the global
    batch), for when the batch does not fit memory. ``resume`` continues an interrupted run in
    ``out_dir`` from its latest checkpoint, or returns at once if it already finished; without it an
    existing run is an error. ``keep_checkpoints`` keeps every epoch's checkpoint, not just the last.
    """
    started = time.perf_counter()
    shards_dir, out_dir = Path(shards_dir).resolve(), Path(out_dir).resolve()
    scale = typed_scale(dict(scale), where=f"scale {scale.get('name')!r}")
    plan = plan_run(shards_dir, scale, seed, device, nproc, accum_freq, log_every_n_steps)
    final = out_dir / RUN_NAME / "checkpoints" / f"epoch_{scale['epochs']}.pt"

    config = run_config(scale, seed, plan)
    if (out_dir / RUN_NAME).exists():
        check_resumable(out_dir, config, resume)
        if final.exists() and (out_dir / "train_stats.json").exists():
            return final
    write_json(out_dir / "train_config.json", config)

    argv = open_clip_args(plan, scale, out_dir, seed, resume, keep_checkpoints)
    command = [sys.executable, "-m", LAUNCHER, *argv]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", LAUNCHER, "--", *argv]  # "--": torchrun would take --logs for its --logs-specs
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "SIFTBENCH_NUM_THREADS": str(plan["threads"]), "OMP_NUM_THREADS": str(plan["threads"])}
    # Spinning OpenMP threads on a CPU shared with loader workers (or other jobs) lose their core and
    # stall each step: measured on 2 busy cores, 2 threads ran 5x slower than 1; passive waiting fixes it.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run = _run_streaming(command, env, out_dir, scale["samples_seen"], plan["samples_per_epoch"], progress)

    tail = "".join(run["tail"])
    log = out_dir / "train.log"
    if run["returncode"] != 0:
        raise StageError(f"open_clip_train failed (exit code {run['returncode']}); full log {log}; last lines:\n{tail}")
    if not final.exists():
        raise StageError(
            f"open_clip_train exited 0 but wrote no final checkpoint {final}; it does that when it refuses "
            f"to start (e.g. an existing run name) or trains nothing. Full log {log}; last lines:\n{tail}"
        )

    per_epoch = _completed_epochs(log)
    actual = sum(per_epoch.get(e, 0) for e in range(scale["epochs"])) if len(per_epoch) >= scale["epochs"] else None
    stats = {
        "scale": scale,
        "seed": int(seed),
        "device": device,
        "nproc": nproc,
        "precision": plan["precision"],
        "threads_per_process": plan["threads"],
        "workers": scale["workers"],
        "per_process_batch": plan["batch"],
        "accum_freq": accum_freq,
        "global_batch": plan["batch"] * nproc * accum_freq,
        "samples_seen": scale["samples_seen"],
        "samples_seen_actual": actual,
        "samples_per_epoch": plan["samples_per_epoch"],
        "steps": scale["samples_seen"] // scale["global_batch"],
        "resumed_from_epoch": run["resumed_from"],
        "samples_this_run": run["samples"],
        "wall_time_s": round(time.perf_counter() - started, 3),
        "startup_s": run["startup_s"],
        "train_loop_s": run["loop_s"],
        "samples_per_s": run["rate"],
        "steady_samples_per_s": run["steady_rate"],
        "final_loss": run["loss"],
        # (seconds since launch, samples trained) at each logged step: throughput over time, for plots.
        "progress_points": [[round(t, 3), n] for t, n in run["points"]],
        "checkpoint": str(final),
        "log": str(log),
        "shards": plan["shards_identity"],
        "command": command,
        "versions": library_versions(("torch", "open_clip_torch", "webdataset")),
    }
    write_json(out_dir / "train_stats.json", stats)
    return final


def run_config(scale: dict[str, Any], seed: int, plan: dict[str, Any]) -> dict[str, Any]:
    """What a training run in a folder is (train_config.json): a resume must not change it."""
    return {"scale": {k: v for k, v in scale.items() if k != "workers"}, "seed": int(seed),
            "global_batch": scale["global_batch"], "shards": plan["shards_identity"]}


def check_resumable(out_dir: Path, config: dict[str, Any], resume: bool) -> None:
    """Refuse to continue a run in ``out_dir`` without ``resume``, or one started with another config."""
    if not resume:
        raise StageError(
            f"{out_dir / RUN_NAME} already holds a training run; resume it (resume=True, the default), "
            f"or train into a new folder, or delete this one to start over"
        )
    config_path = out_dir / "train_config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != json.loads(json.dumps(config)):
            differs = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise StageError(
                f"{out_dir}: the run there was started with different {', '.join(differs)}; resuming it would "
                "mix two configurations. Train into a new folder, or delete this one to start over"
            )


def plan_run(shards_dir: Path, scale: dict[str, Any], seed: int, device: str, nproc: int, accum_freq: int,
             log_every: int | None, check_device: bool = True) -> dict[str, Any]:
    """Everything the command needs, checked before a process starts (errors here are the user's to fix).

    ``check_device=False`` when the command runs elsewhere (a SLURM job written on a login node without GPUs).
    """
    name = scale["name"]
    if nproc < 1 or accum_freq < 1:
        raise ConfigError(f"train: nproc ({nproc}) and accum_freq ({accum_freq}) must be >= 1")
    if scale["global_batch"] % (nproc * accum_freq):
        raise ConfigError(
            f"scale {name!r}: global batch {scale['global_batch']} does not split into {nproc} processes x "
            f"{accum_freq} accumulation steps; choose nproc and accum_freq whose product divides it"
        )
    if scale["samples_seen"] % scale["epochs"]:
        raise ConfigError(f"scale {name!r}: samples_seen {scale['samples_seen']} is not divisible by epochs "
                          f"{scale['epochs']}; pick epochs that divide it")
    samples_per_epoch = scale["samples_seen"] // scale["epochs"]
    _check_model_known(scale["model"])
    pattern, n_shards, identity = _shards(shards_dir)
    loaders = max(1, scale["workers"]) * nproc
    if n_shards < loaders:
        raise StageError(
            f"{shards_dir}: {n_shards} shards for {loaders} loader workers (workers x processes); webdataset "
            f"0.2.86 raises with fewer shards than workers. Reshard with min_shards={loaders}, or lower scale.workers"
        )
    if device.startswith("cuda") and check_device:
        import torch  # heavy, optional (siftbench[ml])

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU; use device=cpu")
    micro_batch = scale["global_batch"] // (nproc * accum_freq)
    steps_per_epoch = max(1, samples_per_epoch // scale["global_batch"])
    return {
        "pattern": pattern,
        "shards_identity": identity,
        "samples_per_epoch": samples_per_epoch,
        "batch": micro_batch,
        "nproc": nproc,
        "accum_freq": accum_freq,
        "device": device,
        # Not resolvable here when the job runs elsewhere: the SLURM script resolves "amp" on its node.
        "precision": resolve_precision(scale["precision"], device) if check_device else scale["precision"],
        "threads": torch_threads(device, nproc),
        "log_every": log_every or max(1, steps_per_epoch // 50),
    }


def resolve_precision(precision: str, device: str) -> str:
    """On CPU always fp32 (AMP there means bf16, and CPU numbers should reproduce); on a GPU "amp" is bf16
    autocast where the GPU has bf16 (no loss scaling needed), else fp16 autocast."""
    if not device.startswith("cuda"):
        return "fp32"
    if precision == "amp":
        import torch  # heavy, optional (siftbench[ml])

        return "amp_bf16" if torch.cuda.is_bf16_supported() else "amp"
    return precision


def open_clip_args(plan: dict[str, Any], scale: dict[str, Any], out_dir: Path, seed: int, resume: bool,
                   keep_checkpoints: bool) -> list[str]:
    args = [
        "--model", scale["model"],
        "--train-data", plan["pattern"],
        "--dataset-type", "webdataset",
        "--train-num-samples", str(plan["samples_per_epoch"]),
        "--epochs", str(scale["epochs"]),
        "--batch-size", str(plan["batch"]),
        "--accum-freq", str(plan["accum_freq"]),
        "--lr", repr(scale["lr"]),
        "--warmup", str(scale["warmup"]),
        "--beta1", repr(scale["beta1"]),
        "--beta2", repr(scale["beta2"]),
        "--eps", repr(scale["eps"]),
        "--wd", repr(scale["weight_decay"]),
        "--lr-scheduler", scale["schedule"],
        "--precision", plan["precision"],
        "--device", "cuda" if plan["device"].startswith("cuda") else plan["device"],
        "--seed", str(seed),
        "--workers", str(scale["workers"]),
        "--save-frequency", "1",
        "--logs", str(out_dir),
        "--name", RUN_NAME,
        "--report-to", "",
        "--log-every-n-steps", str(plan["log_every"]),
    ]
    flags = {"--dataset-resampled": scale["dataset_resampled"], "--local-loss": scale["local_loss"],
             "--gather-with-grad": scale["gather_with_grad"], "--grad-checkpointing": scale["grad_checkpointing"],
             "--delete-previous-checkpoint": not keep_checkpoints}
    args += [flag for flag, on in flags.items() if on]
    if resume:
        args += ["--resume", "latest"]  # no checkpoint yet: open_clip_train starts from scratch
    # Always explicit: a no-op at the model's native size, and the scale's value wins otherwise.
    args += ["--force-image-size", str(scale["image_size"])]
    return args


def _check_model_known(model: str) -> None:
    """Fail before launching for an unknown architecture, without importing open_clip (seconds) here."""

    spec = find_spec("open_clip")
    folders = [MODEL_CONFIG_DIR] + [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])]
    if not any((folder / f"{model}.json").is_file() for folder in folders):
        ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ConfigError(f"unknown model {model!r}: not an open_clip architecture (e.g. ViT-B-32) nor one of "
                          f"siftbench's {ours} (configs/model/*.json)")


def _shards(shards_dir: Path) -> tuple[str, int, dict[str, Any]]:
    """The brace pattern of the training shards, their number, and what identifies them."""
    manifest_path = shards_dir / "manifest.json"
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        names, pattern = manifest["shards"], manifest["pattern"]
        identity = {"subset_sha256": manifest.get("subset_sha256"), "num_samples": manifest.get("num_samples"),
                    "num_shards": len(names), "reshard_seed": manifest.get("seed")}
    else:
        names = sorted(p.name for p in shards_dir.glob("*.tar"))
        if not names:
            raise StageError(f"{shards_dir}: no training shards (*.tar); write them with reshard first")
        width = len(names[0]) - 4
        expected = [f"{i:0{width}d}.tar" for i in range(len(names))]
        if names != expected:
            raise StageError(f"{shards_dir}: shards must be named {expected[0]} .. {expected[-1]} without gaps; "
                             "write them with reshard")
        pattern = f"{{{expected[0][:-4]}..{expected[-1][:-4]}}}.tar"
        identity = {"num_shards": len(names), "bytes": sum((shards_dir / n).stat().st_size for n in names)}
    missing = [n for n in names if not (shards_dir / n).is_file()]
    if missing:
        raise StageError(f"{shards_dir}: shard(s) {missing[:3]} listed in manifest.json are missing; rerun reshard")
    for name in names:
        _check_tar_start(shards_dir / name)
    return str(shards_dir / pattern), len(names), identity


def _read_manifest(path: Path) -> dict[str, Any]:
    fix = "rerun reshard into a new folder (it writes manifest.json last, once every shard is written)"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list) \
            or not isinstance(manifest.get("pattern"), str):
        raise StageError(f"{path}: no 'shards' list and 'pattern' string, as reshard writes them; {fix}")
    return manifest


def _check_tar_start(path: Path) -> None:
    """A training shard must start with a tar header: an empty or foreign file would make the loader wait
    forever for samples (resampled webdataset) instead of failing. One block read per shard."""
    with open(path, "rb") as f:
        block = f.read(tarfile.BLOCKSIZE)
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as e:
        found = "an empty file" if not block else "an empty tar" if not block.strip(b"\0") else f"not a tar ({e})"
        raise StageError(f"{path}: {found}, not training samples; rerun reshard into a new folder") from None


def _run_streaming(command: list[str], env: dict[str, str], out_dir: Path, total: int, per_epoch: int,
                   progress: bool) -> dict[str, Any]:
    """Run the trainer, copy its output to train.log, follow its progress lines, time the training loop."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    points: list[tuple[float, int]] = []  # (time, samples trained so far) at each progress line
    resumed_from = None
    loss = None
    t0 = time.perf_counter()
    t_loop = None
    bar = progress_bar(enabled=progress, total=total, unit="sample", unit_scale=True, desc="train", dynamic_ncols=True)
    # Line-buffered: a killed run keeps every line, which _completed_epochs needs after a resume.
    with open(out_dir / "train.log", "a", buffering=1) as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                bufsize=1, cwd=out_dir)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                now = time.perf_counter()
                if t_loop is None and "Start epoch" in line:
                    t_loop = now
                if m := _RESUMED.search(line):
                    resumed_from = int(m.group(1))
                    bar.update(resumed_from * per_epoch - bar.n)
                if m := _PROGRESS.search(line):
                    done = int(m.group(1)) * per_epoch + int(m.group(2))
                    points.append((now, done))
                    if lm := _LOSS.search(line):
                        loss = float(lm.group(1))
                        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                    bar.update(max(0, done - bar.n))
            proc.wait()
        except BaseException:
            proc.terminate()  # Ctrl-C or an error here must not leave a trainer running
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            bar.close()
    start = (resumed_from or 0) * per_epoch
    samples = points[-1][1] - start if points else 0
    loop_s = points[-1][0] - t_loop if points and t_loop is not None else None
    steady = None
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        steady = round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 2)
    return {
        "returncode": proc.returncode,
        "tail": list(tail),
        "resumed_from": resumed_from,
        "samples": samples,
        "loss": loss,
        "startup_s": round(t_loop - t0, 3) if t_loop is not None else None,
        "loop_s": round(loop_s, 3) if loop_s else None,
        "rate": round(samples / loop_s, 2) if loop_s else None,
        "steady_rate": steady,
        "points": [(t - t0, n) for t, n in points],
    }


def _completed_epochs(log: Path) -> dict[int, int]:
    """Samples trained in each completed epoch, from the last time the log shows it complete."""
    done: dict[int, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if (m := _PROGRESS.search(line)) and m.group(2) == m.group(3):
            done[int(m.group(1))] = int(m.group(2))
    return done


def torch_threads(device: str, nproc: int) -> int:
    """Intra-op threads per training process: the cores split between processes on CPU (the loader
    workers are mostly waiting on 32 px decodes); a few on GPU, where torch only launches kernels."""
    per_process = max(1, usable_cores() // nproc)
    return per_process if not device.startswith("cuda") else min(4, per_process)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def benchmark_training_throughput(
    shards_dir: Path | None = None,
    scale: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    steps: int = 20,
    warmup_steps: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Compute-only vs end-to-end training samples/s for ``scale`` on this machine, and their ratio.

    Compute-only: forward + backward + AdamW step of the CLIP loss on in-memory random tensors, same
    model, batch, threads and precision as the trainer. End-to-end: the real trainer (subprocess, loader
    workers, shards) for ``warmup_steps + steps`` steps, timed from the end of step ``warmup_steps`` so
    neither process startup nor loader warm-up counts. A ratio well below 1 means the loader (or
    something else outside the model) is the bottleneck. Defaults: the ``tiny`` scale, on synthetic
    shards of random images at the scale's size (written to a temporary folder).
    """

    scale = scale if scale is not None else load_scale("tiny")
    if shards_dir is None:
        with tempfile.TemporaryDirectory(prefix="siftbench-bench-shards-") as tmp:
            _synthetic_shards(Path(tmp), scale["image_size"], n_shards=max(2, scale["workers"]))
            return benchmark_training_throughput(Path(tmp), scale, out_dir, seed, device, steps, warmup_steps, progress)
    threads = torch_threads(device, 1)
    before = _compute_only_rate(scale, device, threads, steps, warmup_steps, seed)
    short = dict(typed_scale(dict(scale)), samples_seen=(steps + warmup_steps) * scale["global_batch"], epochs=1,
                 warmup=min(scale["warmup"], steps), comparable=False)
    with tempfile.TemporaryDirectory(prefix="siftbench-bench-") as tmp:
        run_dir = Path(out_dir) if out_dir is not None else Path(tmp)
        # Logging reads the loss (.item()), which waits for the GPU: every step, it would stop the trainer
        # from queueing the next step's kernels early, which the compute-only loop does. So log every
        # warm-up's worth of steps: the first point after warm-up starts the clock, the last stops it.
        log_every = max(1, warmup_steps)
        train(shards_dir, short, run_dir, seed, device=device, resume=False, progress=progress,
              log_every_n_steps=log_every)
        stats = json.loads((run_dir / "train_stats.json").read_text())
        points = stats["progress_points"]
        warm = [i for i, (_, n) in enumerate(points) if n >= warmup_steps * scale["global_batch"]]
        data_wait = _mean_data_time(run_dir / "train.log", skip=warm[0] if warm else len(points))
    # Measured on both sides of the real run, so a machine whose load drifts meanwhile biases neither side.
    after = _compute_only_rate(scale, device, threads, steps, warmup_steps, seed)
    compute = (before + after) / 2
    # From the first progress point past the warm-up steps (loader start, first allocations) to the last.
    end_to_end = None
    if warm and warm[0] < len(points) - 1:
        (t0, n0), (t1, n1) = points[warm[0]], points[-1]
        end_to_end = (n1 - n0) / (t1 - t0) if t1 > t0 else None
    result = {
        "model": scale["model"],
        "global_batch": scale["global_batch"],
        "precision": resolve_precision(scale["precision"], device),
        "device": device,
        "threads": threads,
        "workers": scale["workers"],
        "steps": steps,
        "compute_only_samples_per_s": round(compute, 1),
        "compute_only_before_after": [round(before, 1), round(after, 1)],
        "data_wait_s_per_step": data_wait,
        "end_to_end_samples_per_s": round(end_to_end, 1) if end_to_end else None,
        "end_to_end_loop_samples_per_s": stats["samples_per_s"],
        "ratio": round(end_to_end / compute, 3) if end_to_end else None,
    }
    print(f"[siftbench] {scale['model']} batch {scale['global_batch']} on {device} ({threads} threads): "
          f"compute-only {result['compute_only_samples_per_s']} samples/s, end-to-end "
          f"{result['end_to_end_samples_per_s']} samples/s, ratio {result['ratio']}")
    return result


def _synthetic_shards(folder: Path, image_size: int, n_shards: int, per_shard: int = 256) -> None:
    """Training shards of random-pixel PNGs (the costliest to decode) with captions of typical length."""
    from PIL import Image  # heavy, optional (siftbench[ml])

    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "small", "large", "circle", "square", "star", "on", "a", "striped", "background"]
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(buf, "PNG")
                caption = " ".join(rng.choice(words, size=8)).encode()
                for ext, data in (("png", buf.getvalue()), ("txt", caption)):
                    info = tarfile.TarInfo(f"{s:05d}{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _mean_data_time(log: Path, skip: int) -> float | None:
    """open_clip_train's "Data (t)": how long each step waited for the loader (0 = it keeps up)."""
    values = [float(v) for v in re.findall(r"Data \(t\): ([0-9.]+)", log.read_text())[skip:]]
    return round(sum(values) / len(values), 4) if values else None


def _compute_only_rate(scale: dict[str, Any], device: str, threads: int, steps: int, warmup_steps: int,
                       seed: int) -> float:
    import torch  # heavy, optional (siftbench[ml])


    register_model_configs()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _timed_steps(scale, device, steps, warmup_steps, seed)
    finally:
        torch.set_num_threads(previous)


def _timed_steps(scale: dict[str, Any], device: str, steps: int, warmup_steps: int, seed: int) -> float:
    import open_clip  # heavy, optional (siftbench[ml])
    import torch  # heavy, optional (siftbench[ml])
    from open_clip.loss import ClipLoss  # heavy, optional (siftbench[ml])

    # enable_grad: the caller may have switched autograd off process-wide (models.load_model does).
    with torch.enable_grad():
        torch.manual_seed(seed)
        precision = resolve_precision(scale["precision"], device)
        model = open_clip.create_model(scale["model"], precision=precision, device=device,
                                       force_image_size=scale["image_size"], output_dict=True)
        if scale["grad_checkpointing"]:
            model.set_grad_checkpointing()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=scale["lr"], betas=(scale["beta1"], scale["beta2"]),
                                      eps=scale["eps"], weight_decay=scale["weight_decay"])
        loss_fn = ClipLoss()
        batch, size = scale["global_batch"], scale["image_size"]
        context = model.context_length
        images = torch.randn(batch, 3, size, size, device=device)
        texts = torch.randint(1, 49407, (batch, context), device=device)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "amp_bf16"
                    else torch.autocast("cuda", dtype=torch.float16) if precision == "amp"
                    else torch.autocast(device.split(":")[0], enabled=False))

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = model(images, texts)
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            optimizer.step()

        for _ in range(warmup_steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        clock = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - clock)


def main(argv: list[str] | None = None) -> None:
    """``python -m siftbench.benchmark.stages.train [SHARDS_DIR] [--scale tiny] [--steps 20]``: the throughput check."""
    # Before torch loads (the compute-only half runs in this process): the trainer's own setting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    parser = argparse.ArgumentParser(prog="python -m siftbench.benchmark.stages.train", description=main.__doc__)
    parser.add_argument("shards_dir", type=Path, nargs="?", help="training shards (default: synthetic ones)")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    args = parser.parse_args(argv)
    result = benchmark_training_throughput(args.shards_dir, load_scale(args.scale), device=args.device,
                                           steps=args.steps, warmup_steps=args.warmup_steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
