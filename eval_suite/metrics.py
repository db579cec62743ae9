"""Zero-shot metrics with clip_benchmark's definitions, plus one documented rule for ties.

Definitions (LAION-AI/CLIP_benchmark, as DataComp uses them):

- classifier: L2-normalise each template's text embedding, average over templates, re-normalise;
  logits = 100 * L2-normalised image features @ classifier.T
- ``acc1``/``acc5``: the true class is among the k highest logits (acc5 only with at least 5 classes)
- ``mean_per_class_recall``: balanced accuracy = mean over the classes PRESENT in the targets of that
  class's recall (sklearn's ``balanced_accuracy_score``)
- ``macro_f1``: F1 averaged over the classes present in the targets (WILDS' ``F1-macro_all``, DataComp's
  main metric for iWildCam)
- worst group (WILDS' and DataComp's ``acc_wg``, ``acc_top5_wg``, ``acc_worst_region``): with a group
  label per sample, ``acc1_worst_group``/``acc5_worst_group`` = the lowest per-group accuracy over the
  groups that have samples (minus any excluded), and ``acc1_group_<g>``/``acc5_group_<g>`` per group
- retrieval, named after what is retrieved: ``image_retrieval_recall@k`` is text->image (per caption:
  its image is in the top k images); ``text_retrieval_recall@k`` is image->text (per image: ANY of its
  captions is in the top k captions); ``mean_recall@1`` is the mean of the two recall@1 (DataComp).
  Scores are cosine similarities; a k at or above the number of candidates gives recall 1.

Ties: candidates are ranked by score, highest first, and EQUAL scores by index, lower index first (class
order in classnames.txt; image and caption order in the shards). That is the order of a stable
descending sort and the rule ``torch.argmax`` documents ("the first maximal value"). ``torch.topk``,
which clip_benchmark uses for acc1/acc5 and recall@k, documents no order for ties and on CPU returns
tied indices in an order that changes with the tensor's size, so there acc1 (topk) and per-class recall
(argmax) can disagree on an exact tie. Here every metric uses the one rule, and ranks are counted, not
sorted: ``rank(i) = #{j: s_j > s_i} + #{j < i: s_j == s_i}``; "in the top k" means ``rank < k``.
Ties are rare with real features but certain for duplicate captions in retrieval.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 24  # rows are ranked in chunks of about this many scores (64 MiB of float32)


def zeroshot_classifier(template_features: torch.Tensor) -> torch.Tensor:
    """(classes, templates, dim) text features -> (classes, dim) unit class vectors."""
    mean = F.normalize(template_features, dim=-1).mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    return 100.0 * F.normalize(image_features, dim=-1) @ classifier.T


def ranks(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of ``scores[rows[q], cols[q]]`` within row ``rows[q]``, ties to the lower index."""
    if rows.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    width = scores.shape[1]
    positions = torch.arange(width)
    chunk = max(1, _CHUNK_ELEMENTS // max(width, 1))
    out = []
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        block = scores[r]
        own = block.gather(1, c[:, None])
        higher = (block > own).sum(dim=1)
        tied_before = ((block == own) & (positions[None, :] < c[:, None])).sum(dim=1)
        out.append(higher + tied_before)
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor | None = None,
                           exclude_groups: tuple[int, ...] = ()) -> dict[str, float]:
    """acc1, acc5 (omitted below 5 classes), mean_per_class_recall and macro_f1 from (N, C) logits;
    with ``groups`` (one label per sample) also the worst-group and per-group accuracies."""
    num_classes = logits.shape[1]
    targets = targets.long()
    rank = ranks(logits, torch.arange(len(targets)), targets)
    metrics = {"acc1": _mean(rank < 1)}
    if num_classes >= 5:
        metrics["acc5"] = _mean(rank < 5)
    if groups is not None:
        metrics.update(worst_group_metrics(rank, groups, exclude_groups, five=num_classes >= 5))
    # rank 0 <=> the target is the first maximal logit <=> argmax (first maximum) == target
    pred = logits.argmax(dim=1)
    correct = rank == 0
    true_count = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets[correct], minlength=num_classes).double()
    pred_count = torch.bincount(pred, minlength=num_classes).double()
    present = true_count > 0
    recall = hits[present] / true_count[present]
    precision = torch.where(pred_count[present] > 0, hits[present] / pred_count[present].clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-300), 0.0)
    metrics["mean_per_class_recall"] = float(recall.mean()) if present.any() else float("nan")
    metrics["macro_f1"] = float(f1.mean()) if present.any() else float("nan")
    return metrics


def worst_group_metrics(rank: torch.Tensor, groups: torch.Tensor, exclude_groups: tuple[int, ...] = (),
                        five: bool = True) -> dict[str, float]:
    """Per-group top-k accuracy and its minimum over the groups present, from each sample's target rank."""
    groups = groups.long()
    kept = sorted(g for g in torch.unique(groups).tolist() if g not in set(exclude_groups))
    if not kept:
        raise ValueError(f"no group left to score: groups present {torch.unique(groups).tolist()}, "
                         f"excluded {list(exclude_groups)}")
    metrics: dict[str, float] = {}
    for name, k in (("acc1", 1), *((("acc5", 5),) if five else ())):
        per_group = {g: _mean(rank[groups == g] < k) for g in kept}
        metrics[f"{name}_worst_group"] = min(per_group.values())
        metrics.update({f"{name}_group_{g}": v for g, v in per_group.items()})
    return metrics


def retrieval_metrics(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways from (captions, images) similarities; ``text_to_image[t]`` is caption t's image."""
    num_texts, num_images = scores.shape
    text_to_image = text_to_image.long()
    if torch.bincount(text_to_image, minlength=num_images).min() < 1:
        raise ValueError("every image needs at least one caption")
    text_rank = ranks(scores, torch.arange(num_texts), text_to_image)
    # image -> text: the rank of every caption in its own image's row; an image counts its best caption
    caption_rank = ranks(scores.T, text_to_image, torch.arange(num_texts))
    best = torch.full((num_images,), num_texts, dtype=torch.long).scatter_reduce(
        0, text_to_image, caption_rank, reduce="amin"
    )
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _mean(text_rank < k)
        metrics[f"text_retrieval_recall@{k}"] = _mean(best < k)
    if 1 in ks:
        metrics["mean_recall@1"] = 0.5 * (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"])
    return metrics


def _mean(mask: torch.Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else float("nan")
