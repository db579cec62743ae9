"""The `siftbench` command: one dispatcher, one subcommand per stage, each calling a plain function.

Each subcommand imports its stage's module when it runs (the one place where project modules are imported
inside functions): `siftbench --help` then loads no pandas, torch or Hydra and answers in ~60 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from siftbench.benchmark.core.errors import (
    ArgumentParser,
    ConfigError,
    SiftbenchError,
    StageError,
    out_folder,
)

EXAMPLES = """examples:
  siftbench run                                         # no_filter on the embedded world, scale tiny
  siftbench run filter=clip_score filter.fraction=0.3 scale=tiny seed=1
  siftbench baselines --seeds 0 1 2                     # the baseline table (markdown, mean ± std)
  siftbench world                                       # generate (or find) the embedded world
  siftbench download /data/datacomp_small/metadata --out /data/small_pool   # img2dataset, DataComp's settings
  siftbench filter runs/my-pool --out runs/my-filter filter=basic
  siftbench evaluate runs/clip_score-tiny-s0
  siftbench train SHARDS --scale medium --out runs/m --slurm --nodes 2 --gpus-per-node 8 --partition gpu
  siftbench scales
"""


def main(argv: Sequence[str] | None = None) -> int:
    # Busy-waiting OpenMP threads made CPU steps 5x slower on a shared 2-core machine; torch reads this
    # when it is first imported, which happens inside the subcommands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    try:
        # Overrides may come after options (`filter POOL --out DIR filter=basic`): argparse leaves those over.
        args, extra = parser.parse_known_args(argv)
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if stray or (extra and not hasattr(args, "overrides")):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return args.func(args) or 0
    except SiftbenchError as e:
        print(f"siftbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("siftbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def seed(value: str) -> int:
    """An argparse type: a seed is a whole number >= 0 (numpy and torch refuse negative ones, later)."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a seed; give a whole number >= 0, e.g. 0")
    return int(value)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (a count of processes, rows, seconds...)."""
    def whole_number(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{number} is below {minimum}; give a whole number >= {minimum}")
        return number

    return whole_number


def config_seed(cfg: Any) -> int:
    """``seed=`` of a composed config as an int, or one clear error (it reaches numpy and torch as given)."""
    value = cfg.seed
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())) \
            or int(value) < 0:
        raise ConfigError(f"seed={value!r} is not a seed; give a whole number >= 0, e.g. seed=0")
    return int(value)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="siftbench",
        description="Benchmark dataset-curation strategies: filter a pool, train CLIP at a fixed budget, evaluate, rank.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    overrides_help = "Hydra overrides, key=value (e.g. filter=clip_score scale=toy seed=1)"

    p = sub.add_parser("run", help="one experiment: filter -> reshard -> train -> evaluate")
    p.add_argument("overrides", nargs="*", default=[], help=overrides_help)
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baselines", help="the baseline strategies over several seeds, as a markdown table")
    p.add_argument("overrides", nargs="*", default=[], help=overrides_help)
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="SEED",
                   help="training seeds, each strategy trained once per seed (default: 0 1 2)")
    p.add_argument("--experiment", default="baselines",
                   help="the strategy set: configs/experiment/<name>.yaml (baselines, filters)")
    p.add_argument("--strategies", nargs="+", help="labels from the experiment's strategies (default: all)")
    p.add_argument("--out", type=out_folder, help="also write the table (.md) and its numbers (.json) here")
    p.add_argument("--submit", action="store_true", help="submit every run to the leaderboard store")
    p.add_argument("--store", type=Path, help="leaderboard store (default: leaderboard.sqlite)")
    p.add_argument("--collect-only", action="store_true",
                   help="build the table from finished runs (results.json) without running or re-evaluating")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("world", help="generate the embedded synthetic world (cached) and print where it is")
    p.add_argument("overrides", nargs="*", default=[], help=overrides_help)
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("download", help="download a pool from metadata parquet files (uid, url, text) with img2dataset")
    p.add_argument("metadata", type=Path, help="folder of *.parquet (and optional same-named *.npz), e.g. DataComp's")
    p.add_argument("--out", type=out_folder, required=True, help="pool folder to write (rerun the same command to resume)")
    p.add_argument("--distributor", choices=["multiprocessing", "pyspark", "ray"], default="multiprocessing",
                   help="img2dataset's distributor: processes here, or a Spark / Ray cluster")
    p.add_argument("--processes", type=at_least(1), help="download processes (default: CPU count)")
    p.add_argument("--threads", type=at_least(1), default=64, help="download threads per process")
    p.add_argument("--samples-per-shard", type=at_least(1), default=10_000, help="samples per pool tar (DataComp: 10,000)")
    p.add_argument("--image-size", type=at_least(1), default=512, help="longest side, resized only if bigger")
    p.add_argument("--no-verify-hash", action="store_true", help="keep images whose sha256 differs from the metadata's")
    p.add_argument("--no-blur-faces", action="store_true", help="ignore the metadata's face_bboxes")
    p.add_argument("--timeout", type=at_least(1), default=10, help="seconds per request")
    p.add_argument("--retries", type=at_least(0), default=0, help="retries per failed request")
    p.add_argument("--url-col", default="url", help="the metadata column holding image URLs")
    p.add_argument("--caption-col", default="text", help="the metadata column holding captions")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("filter", help="score + select over a pool: writes subset.npy and subset_stats.json")
    p.add_argument("pool", type=Path, help="a pool folder in DataComp's layout (metadata/, shards/)")
    p.add_argument("--out", type=out_folder, required=True,
                   help="folder for subset.npy, subset_stats.json and scores/ (rerun the same command to resume)")
    p.add_argument("overrides", nargs="*", default=[], help=overrides_help)
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("embed", help="embed a pool's images and captions with an open_clip model")
    p.add_argument("pool", type=Path, help="a pool folder in DataComp's layout; writes <pool>/embeddings/<key>/")
    p.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-B-32 or siftbench-tiny")
    p.add_argument("--pretrained", help="a pretrained tag whose weights are in the local cache, a weights file, "
                                        "or 'world' (the embedded world's scoring model, trained once and cached)")
    p.add_argument("--checkpoint", type=Path, help="a local checkpoint file")
    p.add_argument("--key", help="name of the embeddings (default: the architecture; 'scorer' for --pretrained world)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (a GPU when there is one)")
    p.add_argument("--batch-size", type=at_least(1), default=256, help="pairs per model call")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="processes that read, decode and preprocess shards while the model runs (0: none; "
                        "default on a GPU: one per core but one, up to 16; 0 on the CPU, where a worker would take "
                        "cores from the model)")
    p.add_argument("overrides", nargs="*", default=[], help="executor=ray [executor.address=auto ...] runs shards on Ray actors")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("reshard", help="pool + subset.npy -> training shards (repeats honoured)")
    p.add_argument("pool", type=Path, help="the pool folder the subset's uids come from")
    p.add_argument("subset", type=Path, help="subset.npy (DataComp's format; a uid listed k times is trained k times)")
    p.add_argument("--out", type=out_folder, required=True, help="folder for the training tars and manifest.json")
    p.add_argument("--seed", type=seed, default=0, help="seed of the shuffle that spreads repeats over shards")
    p.add_argument("--workers", type=at_least(0), default=1, help="processes reading and writing tars")
    p.set_defaults(func=cmd_reshard)

    p = sub.add_parser("train", help="train CLIP on training shards at a fixed scale")
    p.add_argument("shards", type=Path, help="the folder reshard wrote (training tars + manifest.json)")
    p.add_argument("--scale", default="toy", help="the budget and hyperparameters: configs/scale/<name>.yaml "
                                                  "(siftbench scales lists them)")
    p.add_argument("--out", type=out_folder, required=True, help="folder for checkpoints, logs and train_stats.json")
    p.add_argument("--seed", type=seed, default=0, help="training seed (data order and initial weights)")
    p.add_argument("--device", help="cpu (default), or cuda (default with --slurm)")
    p.add_argument("--nproc", type=at_least(1), default=1, help="processes (torchrun) on this machine")
    slurm = p.add_argument_group("SLURM (writes an sbatch script and prints the sbatch command; submits nothing)")
    slurm.add_argument("--slurm", action="store_true", help="write <out>/slurm/train.sbatch instead of training")
    slurm.add_argument("--nodes", type=at_least(1), default=1, help="nodes per job")
    slurm.add_argument("--gpus-per-node", type=at_least(1), default=8, help="GPUs (processes) per node")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--time", default="24:00:00", help="time limit per job (a requeued job starts a new one)")
    slurm.add_argument("--cpus-per-task", type=at_least(1), help="CPUs per node (default: gpus x (loader workers + 1))")
    slurm.add_argument("--per-gpu-batch", type=at_least(1),
                       help="largest batch that fits one GPU; the rest is gradient accumulation")
    slurm.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True,
                       help="requeue near the time limit / on preemption and resume from the latest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run directory, or an architecture + checkpoint, on a suite")
    p.add_argument("run_dir", type=Path, nargs="?", help="a finished `siftbench run` folder (its model, checkpoint "
                                                       "and eval sets)")
    p.add_argument("--model", help="open_clip architecture name, or the path of an architecture .json (a custom "
                                   "open_clip config); with --checkpoint or --pretrained")
    p.add_argument("--checkpoint", type=Path, help="a local weights file (open_clip_train's epoch_N.pt or a state dict)")
    p.add_argument("--pretrained", help="a pretrained tag whose weights are in the local cache, or a weights file")
    p.add_argument("--suite", default="world", help="configs/eval/<name>.yaml (world, datacomp) or a suite YAML path")
    p.add_argument("--eval-root", type=Path, help="folder with the suite's datasets (default: the world's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=out_folder, help="also write evaluation.json and DataComp's eval_results.jsonl here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("scales", help="print the scale table (DataComp's scales and the CPU ones)")
    p.set_defaults(func=cmd_scales)

    p = sub.add_parser("bench", help="speed benchmarks: training data path vs compute-only, metadata scan rate")
    p.add_argument("--rows", type=at_least(1), default=1_000_000, help="rows of the synthetic metadata pool")
    p.add_argument("--skip-training", action="store_true", help="leave out the training throughput section")
    p.add_argument("--only", help="comma-separated sections instead of the default ones: "
                                   "scan, training, filters, embed (stage vs in-memory model), scaling (1M vs 5M rows)")
    p.add_argument("--filters", action="store_true",
                   help="also the filter library's figures: SemDeDup on 1M x 512, concept matching, 12.8M-row scan")
    p.set_defaults(func=cmd_bench)

    try:
        from siftbench.leaderboard.cli import add_leaderboard_commands
    except ImportError:  # the leaderboard is optional in a trimmed install
        pass
    else:
        add_leaderboard_commands(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from siftbench.benchmark.experiment.config import compose_config
    from siftbench.benchmark.experiment.runner import run_experiment

    cfg = compose_config(args.overrides)
    config_seed(cfg)
    if args.show_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg))
        return 0
    run_dir = run_experiment(cfg)
    print((run_dir / "report.md").read_text())
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from siftbench.benchmark.experiment.baselines import baselines_main

    # `--strategies a b scale=demo`: argparse hands the override to --strategies; give it back.
    if args.strategies:
        args.overrides += [s for s in args.strategies if "=" in s]
        args.strategies = [s for s in args.strategies if "=" not in s]
    args.overrides += [s for s in args.seeds if "=" in s]
    args.seeds = seed_list([s for s in args.seeds if "=" not in s])
    print(baselines_main(args.seeds, args.strategies, args.overrides, args.out, submit=args.submit, store=args.store,
                         collect_only=args.collect_only, experiment=args.experiment))
    return 0


def seed_list(values: list[str]) -> list[int]:
    """``--seeds`` as integers (>= 0), or one clear error naming what is not a seed."""
    if not values:
        raise ConfigError("--seeds: no seed given; e.g. --seeds 0 1 2")
    if bad := [v for v in values if not v.isdigit()]:
        raise ConfigError(f"--seeds: {', '.join(map(repr, bad))} is not a seed; give whole numbers >= 0, "
                          "e.g. --seeds 0 1 2")
    return [int(v) for v in values]


def cmd_world(args: argparse.Namespace) -> int:
    from siftbench.benchmark.experiment.config import compose_config, to_dict
    from siftbench.benchmark.world import ensure_world

    world = ensure_world(to_dict(compose_config(args.overrides).world))
    print(json.dumps({"root": str(world.root), "pool": str(world.pool_dir), "reference": str(world.reference_dir),
                      "eval": str(world.eval_dir), "version": world.version, "hash": world.content_hash}, indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from siftbench.benchmark.stages.download import download_pool

    stats = download_pool(
        args.metadata, args.out, distributor=args.distributor, processes=args.processes, threads=args.threads,
        samples_per_shard=args.samples_per_shard, image_size=args.image_size, verify_hash=not args.no_verify_hash,
        blur_faces=not args.no_blur_faces, timeout=args.timeout, retries=args.retries, url_col=args.url_col,
        caption_col=args.caption_col,
    )
    print(json.dumps(stats, indent=2))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.executors import make_executor
    from siftbench.benchmark.experiment.config import compose_config, import_plugins, to_dict
    from siftbench.benchmark.stages.select import run_filter

    cfg = compose_config(args.overrides)
    seed = config_seed(cfg)
    import_plugins(cfg.plugins)
    stats = run_filter(args.pool, to_dict(cfg.filter), args.out, seed=seed,
                       executor=make_executor(to_dict(cfg.executor)))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.executors import make_executor
    from siftbench.benchmark.experiment.config import compose_config, to_dict
    from siftbench.benchmark.stages.embed import embed_pool
    from siftbench.benchmark.world.scorer import world_scorer_checkpoint

    cfg = compose_config(args.overrides)
    checkpoint, pretrained, key = args.checkpoint, args.pretrained, args.key
    if pretrained == "world":
        checkpoint, pretrained = world_scorer_checkpoint(to_dict(cfg.world), to_dict(cfg.scorer), args.model), None
        key = key or to_dict(cfg.scorer)["name"]
    elif pretrained is not None and Path(pretrained).is_file():
        checkpoint, pretrained = Path(pretrained), None
    from siftbench.benchmark.stages.embed import default_decode_workers

    # Locally one process embeds (it uses every core) with decode workers beside it; Ray spreads actors.
    executor = make_executor(to_dict(cfg.executor)) if cfg.executor.name != "local" else None
    stats = embed_pool(args.pool, arch=args.model, model_key=key or args.model, checkpoint=checkpoint,
                       pretrained=pretrained, batch_size=args.batch_size, device=args.device, executor=executor,
                       num_workers=args.workers if args.workers is not None else default_decode_workers(args.device))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_reshard(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.uids import read_subset
    from siftbench.benchmark.stages.reshard import reshard

    subset = read_subset(args.subset)
    if not len(subset):
        raise StageError(f"{args.subset}: holds no uids, so there is nothing to reshard or train on; "
                         "check the filter's subset_stats.json (what each step dropped) and loosen it")
    print(json.dumps(reshard(args.pool, subset, args.out, seed=args.seed, workers=args.workers), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.scales import load_scale
    from siftbench.benchmark.stages.train import train

    if args.slurm:
        from siftbench.benchmark.stages.train.slurm import write_slurm_job

        job = write_slurm_job(args.shards, load_scale(args.scale), args.out, seed=args.seed, nodes=args.nodes,
                              gpus_per_node=args.gpus_per_node, partition=args.partition, time_limit=args.time,
                              account=args.account, cpus_per_task=args.cpus_per_task,
                              max_per_gpu_batch=args.per_gpu_batch, requeue=args.requeue,
                              device=args.device or "cuda")
        print(job.describe())
        return 0
    print(train(args.shards, load_scale(args.scale), args.out, seed=args.seed, device=args.device or "cpu",
                nproc=args.nproc))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from siftbench.benchmark.experiment.evaluate_run import evaluate_main
    from siftbench.benchmark.stages.models import read_architecture_file

    # What the user named must exist before the suite is read and a model built (seconds each).
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise StageError(f"--checkpoint {args.checkpoint}: no such file; give a weights file (open_clip_train's "
                         "epoch_N.pt or a state dict)")
    if args.model is not None and args.model.endswith(".json"):
        read_architecture_file(args.model)
    print(json.dumps(evaluate_main(args), indent=2))
    return 0


def cmd_scales(args: argparse.Namespace) -> int:
    from siftbench.benchmark.core.scales import scale_table

    print(scale_table().to_string(index=False))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from siftbench.benchmark.perf.bench import run_benchmarks

    if args.only:
        from siftbench.benchmark.perf.bench_pool import run_sections

        run_sections([s.strip() for s in args.only.split(",") if s.strip()], rows=args.rows)
        return 0

    run_benchmarks(rows=args.rows, training=not args.skip_training)
    if args.filters:
        from siftbench.benchmark.perf.bench_filters import run_filter_benchmarks

        run_filter_benchmarks()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
