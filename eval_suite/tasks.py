"""Eval task types, chosen by name from a suite's YAML through a registry, so new types plug in.

A task type reads one clip_benchmark task folder and returns metrics. Third-party types register under
the ``siftbench.eval_tasks`` entry-point group (``my_type = "my_pkg.module:MyTask"``). torch is imported
inside ``evaluate`` so that loading and validating a suite stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from siftbench.benchmark.core.registry import Registry

from .data import SkipCounter, TaskData

RECALL_KS = (1, 5, 10)


@dataclass
class TaskResult:
    metrics: dict[str, float]
    num_samples: int
    skipped: SkipCounter
    chance: dict[str, float] | None = None  # per metric, when only the data tells (e.g. 1/images)


class EvalTask:
    """Base class. ``dataset_type`` is what the folder's dataset_type.txt must say."""

    dataset_type: ClassVar[str] = "classification"

    def metric_names(self, data: TaskData) -> tuple[str, ...]:
        """The metrics ``evaluate`` returns for this folder (a suite's main_metric must be one)."""
        raise NotImplementedError

    def evaluate(
        self, model: Any, preprocess: Callable, tokenizer: Callable, data: TaskData, *,
        device: str, batch_size: int, num_workers: int = 0, progress: bool = True,
    ) -> TaskResult:
        raise NotImplementedError


TASK_TYPES: Registry[type[EvalTask]] = Registry("eval task type", entry_point_group="siftbench.eval_tasks")


@TASK_TYPES.register("zeroshot_classification")
class ZeroShotClassification(EvalTask):
    """Class name prompts from the templates; the image's class is the most similar prompt average."""

    dataset_type = "classification"

    def metric_names(self, data: TaskData) -> tuple[str, ...]:
        five = len(data.classnames or ()) >= 5
        names = ("acc1", *(("acc5",) if five else ()), "mean_per_class_recall", "macro_f1")
        if data.group_field is not None:  # per-group accuracies come too, named by the groups found
            names += ("acc1_worst_group", *(("acc5_worst_group",) if five else ()))
        return names

    def evaluate(self, model, preprocess, tokenizer, data, *, device, batch_size, num_workers=0, progress=True):
        import torch  # heavy, optional (siftbench[ml])

        from .loading import check_finite, encode_images, encode_texts  # these two import torch
        from .metrics import classification_metrics, zeroshot_classifier, zeroshot_logits

        classnames, templates = data.classnames or (), data.templates or ()
        prompts = [t.replace("{c}", c) for c in classnames for t in templates]
        text = encode_texts(model, tokenizer, prompts, device=device, batch_size=batch_size)
        check_finite(text, f"{data.folder} (class prompts)")
        classifier = zeroshot_classifier(text.reshape(len(classnames), len(templates), -1))
        images = encode_images(model, preprocess, data, device=device, batch_size=batch_size,
                               num_workers=num_workers, progress=progress, desc=data.folder.name)
        check_finite(images.features, f"{data.folder} (images)")
        logits = zeroshot_logits(images.features, classifier)
        if data.group_field is None:
            metrics = classification_metrics(logits, torch.tensor(images.targets))
        else:
            labels, groups = torch.tensor(images.targets).T  # targets are (label, group) pairs
            metrics = classification_metrics(logits, labels, groups, data.exclude_groups)
        return TaskResult(metrics, len(images.targets), images.skipped)


@TASK_TYPES.register("zeroshot_retrieval")
class ZeroShotRetrieval(EvalTask):
    """Image<->caption retrieval by cosine similarity; an image may have several captions."""

    dataset_type = "retrieval"

    def metric_names(self, data: TaskData) -> tuple[str, ...]:
        names = [f"{way}_retrieval_recall@{k}" for k in RECALL_KS for way in ("image", "text")]
        return (*names, "mean_recall@1")

    def evaluate(self, model, preprocess, tokenizer, data, *, device, batch_size, num_workers=0, progress=True):
        import torch  # heavy, optional (siftbench[ml])
        import torch.nn.functional as F  # heavy, optional (siftbench[ml])

        from .loading import check_finite, encode_images, encode_texts  # these two import torch
        from .metrics import retrieval_metrics

        images = encode_images(model, preprocess, data, device=device, batch_size=batch_size,
                               num_workers=num_workers, progress=progress, desc=data.folder.name)
        check_finite(images.features, f"{data.folder} (images)")
        captions = [c for captions in images.targets for c in captions]
        text_to_image = torch.tensor([i for i, captions in enumerate(images.targets) for _ in captions])
        text = encode_texts(model, tokenizer, captions, device=device, batch_size=batch_size)
        check_finite(text, f"{data.folder} (captions)")
        scores = F.normalize(text, dim=-1) @ F.normalize(images.features, dim=-1).T
        metrics = retrieval_metrics(scores, text_to_image, RECALL_KS)
        # Random scores hit with probability k/images both ways (an image with c of the M captions is
        # found with probability ~c*k/M, and c averages M/images).
        chance = {name: min(1.0, int(name.rsplit("@", 1)[1]) / len(images.targets)) for name in metrics}
        return TaskResult(metrics, len(images.targets), images.skipped, chance)
