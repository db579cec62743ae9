"""SLURM: an sbatch script that runs the same training as `siftbench train`, on nodes x GPUs.

Nothing is submitted; ``write_slurm_job`` writes two files into ``<out>/slurm/`` and returns the
``sbatch`` command to run:

    train.sbatch  the #SBATCH header; finds the rendezvous node (first of ``scontrol show hostnames``),
                  starts one ``srun`` task per node, requeues itself near the time limit (``--requeue``),
                  and fails when no final checkpoint appeared (open_clip_train can exit 0 without one)
    launch.sh     per node: ``torchrun --nnodes $SLURM_NNODES --node_rank $SLURM_NODEID`` with
                  ``--master_addr/--master_port`` from the environment, one process per GPU, running
                  open_clip_train through siftbench's launcher with the exact arguments `siftbench train` uses

The global batch is the scale's, whatever the number of GPUs: each process gets ``global / world``
samples per step, split into ``accum_freq`` micro-batches when that exceeds ``max_per_gpu_batch``
(open_clip's accumulation still contrasts every sample against the whole global batch). A requeued job
resumes from its latest epoch checkpoint (``--resume latest``), so it loses at most one epoch of work:
raise the scale's ``epochs`` (an execution field) for finer checkpoints.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.atomic import write_json, write_text
from siftbench.benchmark.core.errors import ConfigError
from siftbench.benchmark.core.scales import typed_scale
from siftbench.benchmark.stages.train import (
    LAUNCHER,
    RUN_NAME,
    check_resumable,
    open_clip_args,
    plan_run,
    run_config,
)


@dataclass(frozen=True)
class SlurmJob:
    sbatch: Path
    launch: Path
    world_size: int
    per_gpu_batch: int  # micro-batch per process and step
    accum_freq: int
    submit: str  # the command to run on the login node

    def describe(self) -> str:
        return (f"wrote {self.sbatch} ({self.world_size} processes, {self.per_gpu_batch} samples per process "
                f"x {self.accum_freq} accumulation steps per optimizer step)\nsubmit it with:\n  {self.submit}")


def split_batch(global_batch: int, world_size: int, max_per_gpu_batch: int | None = None) -> tuple[int, int]:
    """(per-process micro-batch, accumulation steps) whose product times ``world_size`` is ``global_batch``.

    The fewest accumulation steps that keep the micro-batch at or below ``max_per_gpu_batch``.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if global_batch % world_size:
        raise ConfigError(f"global batch {global_batch} does not split evenly over {world_size} processes; "
                          "choose nodes x gpus-per-node that divides it (e.g. a power of two)")
    per_process = global_batch // world_size
    if max_per_gpu_batch is None or per_process <= max_per_gpu_batch:
        return per_process, 1
    if max_per_gpu_batch < 1:
        raise ConfigError(f"max per-GPU batch must be >= 1, got {max_per_gpu_batch}")
    for accum in range(math.ceil(per_process / max_per_gpu_batch), per_process + 1):
        if per_process % accum == 0:
            return per_process // accum, accum
    raise AssertionError("unreachable: accum = per_process always divides")


def write_slurm_job(
    shards_dir: Path,
    scale: dict[str, Any],
    out_dir: Path,
    seed: int = 0,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    partition: str | None = None,
    time_limit: str = "24:00:00",
    account: str | None = None,
    cpus_per_task: int | None = None,
    max_per_gpu_batch: int | None = None,
    requeue: bool = True,
    device: str = "cuda",
    python: str = sys.executable,
    keep_checkpoints: bool = False,
) -> SlurmJob:
    """Write ``out_dir/slurm/{train.sbatch,launch.sh}`` for ``scale`` on ``nodes`` x ``gpus_per_node``.

    ``device="cpu"`` makes ``gpus_per_node`` processes per node on CPU (gloo), for a dry run.
    The same folder checks apply as for `siftbench train`: shards vs loader workers, an existing run
    with another configuration is refused.
    """
    shards_dir, out_dir = Path(shards_dir).resolve(), Path(out_dir).resolve()
    scale = typed_scale(dict(scale), where=f"scale {scale.get('name')!r}")
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"--nodes ({nodes}) and --gpus-per-node ({gpus_per_node}) must be >= 1")
    world = nodes * gpus_per_node
    per_gpu, accum = split_batch(scale["global_batch"], world, max_per_gpu_batch)
    plan = plan_run(shards_dir, scale, seed, device, world, accum, None, check_device=False)
    cuda = device.startswith("cuda")
    # On the job's node, not here: bf16 autocast where the GPU has it (as resolve_precision does locally).
    runtime_precision = cuda and scale["precision"] == "amp"
    plan["precision"] = "@PRECISION@" if runtime_precision else (scale["precision"] if cuda else "fp32")
    cpus = cpus_per_task or gpus_per_node * (scale["workers"] + 1)
    threads = max(1, cpus // gpus_per_node)
    threads = min(4, threads) if cuda else threads  # on a GPU, torch threads only launch kernels

    config = run_config(scale, seed, plan)
    if (out_dir / RUN_NAME).exists():
        check_resumable(out_dir, config, resume=True)
    write_json(out_dir / "train_config.json", config)

    args = open_clip_args(plan, scale, out_dir, seed, resume=True, keep_checkpoints=keep_checkpoints)
    quoted = " ".join(shlex.quote(a) for a in args).replace("@PRECISION@", '"$PRECISION"')
    final = out_dir / RUN_NAME / "checkpoints" / f"epoch_{scale['epochs']}.pt"
    folder = out_dir / "slurm"
    launch = folder / "launch.sh"
    sbatch = folder / "train.sbatch"
    write_text(launch, _launch_script(python, out_dir, nodes, gpus_per_node, threads, cuda, runtime_precision, quoted))
    write_text(sbatch, _sbatch_script(scale, out_dir, launch, final, nodes, gpus_per_node, cpus, partition,
                                      time_limit, account, requeue, cuda))
    launch.chmod(0o755)
    sbatch.chmod(0o755)
    return SlurmJob(sbatch, launch, world, per_gpu, accum, f"sbatch {shlex.quote(str(sbatch))}")


def _launch_script(python: str, out_dir: Path, nodes: int, gpus_per_node: int, threads: int, cuda: bool,
                   runtime_precision: bool, args: str) -> str:
    precision = ""
    if runtime_precision:
        precision = ('PRECISION=$("$PYTHON" -c "import torch; '
                     "print('amp_bf16' if torch.cuda.is_bf16_supported() else 'amp')\")\n")
    return f"""#!/bin/bash
# Written by siftbench (stages/train/slurm.py). One srun task per node runs this: torchrun starts
# {gpus_per_node} training process(es) here; rank = node rank x {gpus_per_node} + local rank.
set -euo pipefail
: "${{MASTER_ADDR:?set by train.sbatch (first node of the job)}}"
: "${{MASTER_PORT:?set by train.sbatch}}"
: "${{SLURM_NNODES:?run through srun inside the job}}"
: "${{SLURM_NODEID:?run through srun inside the job}}"
if [ "$SLURM_NNODES" != {nodes} ]; then
  echo "launch.sh: written for {nodes} node(s), the job has $SLURM_NNODES; the per-GPU batch would be wrong." \\
       "Rewrite it with siftbench train --slurm --nodes $SLURM_NNODES" >&2
  exit 1
fi
PYTHON={shlex.quote(python)}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
export OMP_NUM_THREADS={threads} SIFTBENCH_NUM_THREADS={threads}
{precision}cd {shlex.quote(str(out_dir))}
# "--": torchrun would take open_clip_train's --logs for its own --logs-specs.
exec "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES" --node_rank="$SLURM_NODEID" \\
  --nproc_per_node={gpus_per_node} --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \\
  -m {LAUNCHER} -- {args}
"""


def _sbatch_script(scale: dict[str, Any], out_dir: Path, launch: Path, final: Path, nodes: int, gpus_per_node: int,
                   cpus: int, partition: str | None, time_limit: str, account: str | None, requeue: bool,
                   cuda: bool) -> str:
    header = [
        f"--job-name=siftbench-{scale['name']}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the per-GPU processes
        *([f"--gpus-per-node={gpus_per_node}"] if cuda else []),
        f"--cpus-per-task={cpus}",
        f"--time={time_limit}",
        *([f"--partition={partition}"] if partition else []),
        *([f"--account={account}"] if account else []),
        f"--output={out_dir / 'slurm' / '%x_%j.out'}",
        "--open-mode=append",  # a requeued job appends to the same log
        *(["--requeue", "--signal=B:USR1@300"] if requeue else []),
    ]
    requeue_block = ""
    if requeue:
        requeue_block = """# Five minutes before the time limit: requeue; the next start resumes from the latest checkpoint.
requeue() { echo "time limit near: requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"; }
trap requeue USR1
"""
    return "#!/bin/bash\n" + "".join(f"#SBATCH {h}\n" for h in header) + f"""
# Written by siftbench (stages/train/slurm.py): scale {scale['name']}, global batch {scale['global_batch']},
# {scale['samples_seen']} samples seen. Submit with: sbatch {shlex.quote(str(out_dir / 'slurm' / 'train.sbatch'))}
set -uo pipefail
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT
{requeue_block}
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash {shlex.quote(str(launch))} &
SRUN=$!
# wait returns early when a trapped signal arrives; keep waiting for srun itself.
while true; do
  wait "$SRUN"; status=$?
  kill -0 "$SRUN" 2>/dev/null || break
done
if [ "$status" -eq 0 ] && [ ! -f {shlex.quote(str(final))} ]; then
  echo "open_clip_train exited 0 without the final checkpoint {final}; see the log above" >&2
  status=1
fi
exit "$status"
"""
