"""`siftbench train --slurm`: the sbatch script is valid bash, keeps the global batch fixed at any world
size, and its per-node launch line really trains (1 node x 2 CPU processes, SLURM's variables set by hand)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pool_factory import make_tiny_pool

from siftbench.benchmark.core.errors import ConfigError, StageError
from siftbench.benchmark.core.scales import load_scale
from siftbench.benchmark.core.uids import hex_to_uids
from siftbench.benchmark.experiment.cli import main as cli_main
from siftbench.benchmark.stages.reshard import reshard
from siftbench.benchmark.stages.train.slurm import split_batch, write_slurm_job


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm")
    uids = make_tiny_pool(root / "pool", n_shards=2, per_shard=64, seed=0)
    reshard(root / "pool", hex_to_uids(uids), root / "shards", seed=0, samples_per_shard=2, progress=False)
    return root / "shards"  # 64 shards: enough for 8 loader workers x 8 processes


@pytest.mark.parametrize(
    ("global_batch", "world", "max_batch", "expected"),
    [
        (4096, 8, None, (512, 1)),  # DataComp small on one 8-GPU node
        (4096, 16, 128, (128, 2)),  # 2 nodes, 128 fits a GPU: accumulate twice
        (4096, 8, 200, (128, 4)),  # 512 per GPU, at most 200: 4 steps of 128 (3 would not divide)
        (90112, 128, 256, (176, 4)),  # xlarge: 704 per GPU
        (64, 2, None, (32, 1)),
    ],
)
def test_split_batch_keeps_the_global_batch(global_batch, world, max_batch, expected):
    micro, accum = split_batch(global_batch, world, max_batch)
    assert (micro, accum) == expected and micro * accum * world == global_batch
    assert max_batch is None or micro <= max_batch


def test_split_batch_refuses_an_uneven_world():
    with pytest.raises(ConfigError, match="4096 does not split evenly over 3 processes"):
        split_batch(4096, 3)


def test_sbatch_script_for_small_on_two_nodes(shards, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", str(shards), "--scale", "small", "--out", str(out), "--slurm", "--nodes", "2",
            "--gpus-per-node", "4", "--partition", "gpu", "--time", "04:00:00", "--per-gpu-batch", "256"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    sbatch, launch = out / "slurm" / "train.sbatch", out / "slurm" / "launch.sh"
    assert f"sbatch {sbatch}" in printed and "8 processes, 256 samples per process x 2 accumulation" in printed
    for script in (sbatch, launch):
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = sbatch.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --time=04:00:00", "#SBATCH --requeue", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=36", 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1',
                 'scontrol requeue "$SLURM_JOB_ID"', f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash {launch}",
                 str(out / "siftbench" / "checkpoints" / "epoch_5.pt")):
        assert line in text, line
    command = launch.read_text()
    for part in ('--nnodes="$SLURM_NNODES"', '--node_rank="$SLURM_NODEID"', "--nproc_per_node=4",
                 '--master_addr="$MASTER_ADDR"', "--batch-size 256", "--accum-freq 2", "--model ViT-B-32",
                 "--train-num-samples 2560000", "--resume latest", '--precision "$PRECISION"', "--lr 0.0005",
                 "--dataset-resampled", "--grad-checkpointing", "--gather-with-grad", "--local-loss"):
        assert part in command, part
    assert json.loads((out / "train_config.json").read_text())["global_batch"] == 4096
    # Without --requeue the job neither requeues nor traps the time-limit signal.
    cli_main([*argv[:5], str(tmp_path / "other"), *argv[6:], "--no-requeue"])
    assert "requeue" not in (tmp_path / "other" / "slurm" / "train.sbatch").read_text()


def test_slurm_refuses_what_training_would(shards, tmp_path):
    with pytest.raises(ConfigError, match="does not split evenly over 24 processes"):
        write_slurm_job(shards, load_scale("small"), tmp_path / "a", nodes=3, gpus_per_node=8)
    with pytest.raises(StageError, match="64 shards for 128 loader workers"):
        write_slurm_job(shards, load_scale("small"), tmp_path / "b", nodes=2, gpus_per_node=8)
    write_slurm_job(shards, load_scale("toy"), tmp_path / "c", nodes=1, gpus_per_node=2, device="cpu")
    (tmp_path / "c" / "siftbench").mkdir()
    with pytest.raises(StageError, match="different seed"):
        write_slurm_job(shards, load_scale("toy"), tmp_path / "c", seed=1, nodes=1, gpus_per_node=2, device="cpu")


def test_generated_launch_line_trains_on_one_node_with_two_cpu_processes(shards, tmp_path):
    # 640 samples = 10 steps of the toy batch 64, 32 per process; what srun would start on node 0.
    scale = dict(load_scale("toy"), samples_seen=640, comparable=False)
    out = tmp_path / "run"
    job = write_slurm_job(shards, scale, out, nodes=1, gpus_per_node=2, cpus_per_task=2, device="cpu")
    assert (job.world_size, job.per_gpu_batch, job.accum_freq) == (2, 32, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run(["bash", str(job.launch)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "siftbench" / "checkpoints" / "epoch_2.pt").is_file()
    log = (out / "siftbench" / "out.log").read_text()
    assert "Train Epoch: 1 [320/320" in log
    params = (out / "siftbench" / "params.txt").read_text()
    assert "world_size: 2" in params and "batch_size: 32" in params
    # A launch on a job with another node count is refused before anything starts.
    wrong = subprocess.run(["bash", str(job.launch)], env={**env, "SLURM_NNODES": "2"}, capture_output=True,
                           text=True)
    assert wrong.returncode == 1 and "written for 1 node(s), the job has 2" in wrong.stderr


def test_launch_script_uses_this_python():
    from siftbench.benchmark.stages.train.slurm import _launch_script

    text = _launch_script(sys.executable, Path("/x"), 1, 1, 1, False, False, "--a")
    assert f"PYTHON={shlex.quote(sys.executable)}" in text
