"""Decode + preprocess a task's images (optionally in DataLoader workers) and encode them in a fixed order.

Workers take whole shards; every sample carries (shard index, position) and features are put back in
shard order afterwards, so results (and tie-breaking by index) do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from siftbench.benchmark.core.errors import StageError
from siftbench.benchmark.core.progress import progress_bar

from .data import SkipCounter, TaskData, decode_image, iter_samples


class DecodedBatches(IterableDataset):
    """Yields ("batch", order, images, targets) per batch and ("skipped", SkipCounter) per shard."""

    def __init__(self, data: TaskData, preprocess: Callable, batch_size: int):
        self.data, self.preprocess, self.batch_size = data, preprocess, batch_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index, shard in enumerate(self.data.shards):
            if index % workers != worker:
                continue
            skipped = SkipCounter()
            order: list[tuple[int, int]] = []
            images: list[torch.Tensor] = []
            targets: list[Any] = []
            for position, (_, raw, target) in enumerate(iter_samples(self.data, [shard], skipped)):
                image = decode_image(raw)
                if image is None:
                    skipped.reasons["undecodable_image"] += 1
                    continue
                order.append((index, position))
                images.append(self.preprocess(image))
                targets.append(target)
                if len(images) == self.batch_size:
                    yield "batch", order, torch.stack(images), targets
                    order, images, targets = [], [], []
            if images:
                yield "batch", order, torch.stack(images), targets
            yield "skipped", skipped


@dataclass
class EncodedImages:
    features: torch.Tensor  # (N, D) float32 on CPU, shard order, NOT normalised
    targets: list[Any]  # int labels or caption lists
    skipped: SkipCounter


def encode_images(
    model: Any,
    preprocess: Callable,
    data: TaskData,
    *,
    device: str,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "",
) -> EncodedImages:
    batches = DecodedBatches(data, preprocess, batch_size)
    stream = (
        DataLoader(batches, batch_size=None, num_workers=min(num_workers, len(data.shards)))
        if num_workers > 0
        else batches
    )
    order: list[tuple[int, int]] = []
    features: list[torch.Tensor] = []
    targets: list[Any] = []
    skipped = SkipCounter()
    with torch.no_grad(), progress_bar(enabled=progress, desc=desc, unit="img", leave=False) as bar:
        for item in stream:
            if item[0] == "skipped":
                skipped.merge(item[1])
                continue
            _, batch_order, images, batch_targets = item
            features.append(model.encode_image(images.to(device)).float().cpu())
            order += batch_order
            targets += batch_targets
            bar.update(len(images))
    if not features:
        raise StageError(
            f"{data.folder}: no usable sample (skipped: {dict(skipped.reasons)}, damaged shards: "
            f"{skipped.damaged_shards}); check the task's data"
        )
    sort = sorted(range(len(order)), key=order.__getitem__)
    return EncodedImages(torch.cat(features)[sort], [targets[i] for i in sort], skipped)


def encode_texts(model: Any, tokenizer: Callable, texts: list[str], *, device: str, batch_size: int) -> torch.Tensor:
    """(len(texts), D) float32 text features on CPU, NOT normalised."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start : start + batch_size]).to(device)
            out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)


def check_finite(features: torch.Tensor, what: str) -> None:
    """A model that outputs NaN/inf (a diverged run) has no meaningful rank: say so instead of scoring it."""
    if not torch.isfinite(features).all():
        raise StageError(f"{what}: the model produced NaN or infinite features; the checkpoint is broken or diverged")
