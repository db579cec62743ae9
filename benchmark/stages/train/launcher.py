"""The training subprocess: ``python -m siftbench.benchmark.stages.train.launcher <open_clip_train args>``.

Runs ``open_clip_train.main`` (open_clip_torch 3.3.0, pinned) with what siftbench needs from a trainer:

- siftbench's architectures (configs/model/*.json) are registered, since open_clip knows only its own;
- DDP on CPU works: open_clip_train passes ``device_ids=[device]`` even on CPU, which gloo rejects;
- epochs are exact: open_clip_train rounds each epoch up to a multiple of the loader workers (DataComp's
  debug scale with 8 workers would train 28% more), so results would depend on the machine; here the
  loader workers share exactly ``train_num_samples / global_batch`` batches per epoch between them;
- checkpoints appear atomically, because ``--resume latest`` picks the newest ``*.pt`` and a kill during
  ``torch.save`` would leave a truncated one;
- open_clip_train reports some failures (e.g. "experiment already exists") by returning -1, which
  exits 0; this launcher exits 1 instead;
- the same ``--seed`` trains the same weights: open_clip_train's sample shuffle seeds itself from the clock,
  so it is swapped for its own epoch-seeded one (``seed_sample_shuffle``);
- loader workers hand over uint8 pictures and the model's visual tower turns them into normalised floats
  on the training device, by a table of ToTensor + Normalize made on the CPU (the same numbers). Workers
  then do a quarter of the copying and none of the float passes: on a GPU machine, where 16 workers
  decoding 224 px JPEGs are the bottleneck, that is what lets the loader keep up (docs/performance.md, GPU checks).

The parent (stages/train/__init__.py) sets SIFTBENCH_NUM_THREADS for torch's intra-op threads. This module is
imported only in the training process, so it imports webdataset at the top (the pipeline subclass must
be importable by name for spawned loader workers).
"""

from __future__ import annotations

import math
import os
import sys
from itertools import islice

import webdataset as wds

from siftbench.benchmark.stages.models import register_model_configs
from siftbench.benchmark.stages.pixels import normalize_table, normalize_uint8


class ExactEpochPipeline(wds.DataPipeline):
    """A training pipeline whose loader workers yield ``exact_batches`` batches per epoch between them."""

    exact_batches: int = 0

    def __iter__(self):
        import torch.utils.data  # heavy, optional (siftbench[ml])

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        share = self.exact_batches // workers + (1 if worker < self.exact_batches % workers else 0)
        return islice(self.iterator(), share)


def patch_exact_epochs() -> None:
    import open_clip_train.data as data  # heavy, optional (siftbench[ml])

    original = data.get_wds_dataset
    if getattr(original, "siftbench_patched", False):
        return

    def get_wds_dataset(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        info = original(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        if is_train:
            global_batch = args.batch_size * args.world_size
            batches = math.ceil(args.train_num_samples / global_batch)
            loader = info.dataloader
            dataset = loader.pipeline[0].dataset  # WebLoader = DataPipeline(DataLoader(dataset))
            if type(dataset) is not wds.DataPipeline:
                raise RuntimeError(f"open_clip_train's loader changed ({type(dataset)}); update the launcher")
            dataset.__class__ = ExactEpochPipeline
            dataset.exact_batches = batches
            seed_sample_shuffle(dataset)
            loader.num_batches, loader.num_samples = batches, batches * global_batch
        return info

    get_wds_dataset.siftbench_patched = True
    data.get_wds_dataset = get_wds_dataset


def seed_sample_shuffle(dataset: wds.DataPipeline) -> None:
    """Make the training pipeline's sample shuffle a function of the seed and the epoch.

    open_clip_train ends its pipeline with ``wds.shuffle``, which without an ``rng`` seeds itself from the
    pid and the clock: two runs with the same seed then saw their samples in different orders and differed
    by up to 4.5 headline points on the world. Its own ``detshuffle2`` with a negative seed draws from the
    loader worker's seed (itself set by ``--seed``, rank and worker id) and the shared epoch, as its shard
    sampler already does.
    """
    import open_clip_train.data as data  # heavy, optional (siftbench[ml])

    epochs = [stage.epoch for stage in dataset.pipeline if isinstance(getattr(stage, "epoch", None), data.SharedEpoch)]
    for i, stage in enumerate(dataset.pipeline):
        if isinstance(stage, wds.filters.FilterFunction) and stage.f is wds.filters._shuffle \
                and stage.kw.get("rng") is None:
            if not epochs:
                raise RuntimeError("open_clip_train's pipeline has no shared epoch; update the launcher")
            dataset.pipeline[i] = data.detshuffle2(bufsize=stage.kw.get("bufsize", 1000),
                                                   initial=stage.kw.get("initial", 100), seed=-1, epoch=epochs[0])


def patch_ddp_on_cpu() -> None:
    import torch  # heavy, optional (siftbench[ml])
    import torch.nn.parallel  # heavy, optional (siftbench[ml])

    ddp = torch.nn.parallel.DistributedDataParallel
    if getattr(ddp, "siftbench_patched", False):
        return

    class CpuFriendlyDDP(ddp):
        siftbench_patched = True

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None  # a CPU module takes no device_ids; gloo raises with them
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuFriendlyDDP


def patch_atomic_checkpoints() -> None:
    import torch  # heavy, optional (siftbench[ml])

    save = torch.save
    if getattr(save, "siftbench_patched", False):
        return

    def atomic_save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike) and os.fspath(f).endswith(".pt"):
            tmp = f"{os.fspath(f)}.partial"  # not *.pt, so `--resume latest` never picks it
            save(obj, tmp, *args, **kwargs)
            os.replace(tmp, f)
            return None
        return save(obj, f, *args, **kwargs)

    atomic_save.siftbench_patched = True
    torch.save = atomic_save


class UInt8Normalize:
    """The tail ``ToTensor() + Normalize(mean, std)`` of a transform, split in two: ``split`` gives the
    transform ending in uint8 (for the loader workers) and this object, whose ``__call__`` (a forward
    pre-hook of the visual tower) normalises on the training device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean, self.std = tuple(mean), tuple(std)
        self.table = None  # ToTensor + Normalize per uint8 value (stages/pixels.py), on the device

    @staticmethod
    def split(transform):
        """``(transform ending in uint8 instead, UInt8Normalize)``, or None when it does not end in
        ToTensor + Normalize (another augmentation: left as open_clip built it)."""
        from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor  # heavy: siftbench[ml]

        steps = list(getattr(transform, "transforms", []))
        if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or type(steps[-1]) is not Normalize:
            return None
        return Compose([*steps[:-2], PILToTensor()]), UInt8Normalize(steps[-1].mean, steps[-1].std)

    def __call__(self, module, args):
        import torch  # heavy, optional (siftbench[ml])


        images = args[0]
        if images.dtype != torch.uint8:
            return None  # already floats (evaluation, or a pipeline left unpatched)
        if self.table is None or self.table.device != images.device:
            self.table = normalize_table(self.mean, self.std, torch.float32).to(images.device)  # once
        return (normalize_uint8(images, self.table), *args[1:])


def patch_uint8_images() -> None:
    import open_clip  # heavy, optional (siftbench[ml])
    import open_clip_train.main as trainer  # heavy, optional (siftbench[ml])

    original = trainer.create_model_and_transforms
    if getattr(original, "siftbench_patched", False):
        return

    def create_model_and_transforms(*args, **kwargs):
        model, preprocess_train, preprocess_val = original(*args, **kwargs)
        split = UInt8Normalize.split(preprocess_train)
        # bf16/fp16 inputs are cast before the model (open_clip's input_dtype): uint8 must reach it whole.
        if split is not None and open_clip.get_input_dtype(kwargs.get("precision", "fp32")) is None \
                and hasattr(model, "visual"):
            preprocess_train, normalize = split
            model.visual.register_forward_pre_hook(normalize)
            print("[siftbench] loader workers hand over uint8 images; ToTensor + Normalize run in the model",
                  flush=True)
        return model, preprocess_train, preprocess_val

    create_model_and_transforms.siftbench_patched = True
    trainer.create_model_and_transforms = create_model_and_transforms


def main(argv: list[str] | None = None) -> int:
    import torch  # heavy, optional (siftbench[ml])


    threads = os.environ.get("SIFTBENCH_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    register_model_configs()
    patch_ddp_on_cpu()
    patch_exact_epochs()
    patch_atomic_checkpoints()
    patch_uint8_images()
    from open_clip_train.main import main as open_clip_main  # heavy, optional (siftbench[ml])

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # torchrun passes its separator through
        argv = argv[1:]
    result = open_clip_main(argv)
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
