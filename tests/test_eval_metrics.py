"""Zero-shot metrics on hand-computed cases: clip_benchmark's definitions and the lower-index tie rule."""

import math

import pytest

torch = pytest.importorskip("torch")

from siftbench.eval_suite.metrics import (  # noqa: E402
    classification_metrics,
    ranks,
    retrieval_metrics,
    zeroshot_classifier,
    zeroshot_logits,
)


def test_classifier_normalises_each_template_then_the_mean():
    # class 0: templates (3, 4) and (0, 2) -> unit (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> / sqrt(0.9)
    # class 1: one template (5, 0) -> (1, 0) (weighting by raw norms would have given another vector)
    features = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[5.0, 0.0], [10.0, 0.0]]])
    classifier = zeroshot_classifier(features)
    expected = torch.tensor([[0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)], [1.0, 0.0]])
    assert torch.allclose(classifier, expected)
    # logits = 100 * unit image features @ classifier.T
    logits = zeroshot_logits(torch.tensor([[0.0, 7.0]]), classifier)
    assert torch.allclose(logits, torch.tensor([[100 * 0.9 / math.sqrt(0.9), 0.0]]))


def test_three_classes_no_acc5_and_recall_over_present_classes_only():
    # Targets use classes 0 and 1 only; class 2 is predicted once but never a target.
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # target 0, pred 0  correct
            [0.2, 0.7, 0.1],  # target 0, pred 1  wrong
            [0.1, 0.2, 0.8],  # target 0, pred 2  wrong
            [0.0, 0.6, 0.3],  # target 1, pred 1  correct
        ]
    )
    targets = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(logits, targets)
    assert "acc5" not in m  # undefined below 5 classes, as in clip_benchmark
    assert m["acc1"] == pytest.approx(2 / 4)
    # recall: class 0 = 1/3, class 1 = 1/1; class 2 is absent from the targets and not averaged in
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 1) / 2)
    # F1 over present classes: class 0: P=1/1, R=1/3 -> 0.5; class 1: P=1/2, R=1 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_acc5_with_six_classes():
    logits = torch.tensor(
        [
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # target 4: rank 4 -> in top 5, not top 1
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # target 5: rank 5 -> outside top 5
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 5: rank 0
        ]
    )
    m = classification_metrics(logits, torch.tensor([4, 5, 5]))
    assert m["acc1"] == pytest.approx(1 / 3)
    assert m["acc5"] == pytest.approx(2 / 3)


def test_ties_go_to_the_lower_index_everywhere():
    # Row 0: classes 0 and 1 tie for first -> class 0 wins: target 1 is wrong, target 0 right.
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 2.0, 2.0]])
    assert ranks(logits, torch.arange(3), torch.tensor([1, 0, 2])).tolist() == [1, 0, 1]
    m = classification_metrics(logits, torch.tensor([1, 0, 2]))
    assert m["acc1"] == pytest.approx(1 / 3)
    # argmax (used for per-class recall / F1) follows the same rule: first maximum
    assert logits.argmax(dim=1).tolist() == [0, 0, 1]
    # A tie straddling the top-5 boundary: six equal logits, target 4 is inside, target 5 outside.
    flat = torch.zeros(2, 6)
    assert classification_metrics(flat, torch.tensor([4, 5]))["acc5"] == pytest.approx(0.5)


def test_ranks_equal_a_stable_descending_sort_with_many_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200, 37), generator=generator).float()  # heavy ties
    cols = torch.randint(0, 37, (200,), generator=generator)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    expected = (order == cols[:, None]).int().argmax(dim=1)
    assert torch.equal(ranks(scores, torch.arange(200), cols), expected)


def test_classification_matches_sklearn_without_ties():
    metrics_lib = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 12, generator=generator)
    targets = torch.randint(0, 10, (300,), generator=generator)  # classes 10, 11 never targets
    m = classification_metrics(logits, targets)
    pred = logits.argmax(dim=1).numpy()
    with pytest.warns(UserWarning):  # sklearn warns that some predicted classes are not in y_true
        balanced = metrics_lib.balanced_accuracy_score(targets.numpy(), pred)
    assert m["mean_per_class_recall"] == pytest.approx(balanced)
    f1 = metrics_lib.f1_score(targets.numpy(), pred, average="macro", labels=sorted(set(targets.tolist())))
    assert m["macro_f1"] == pytest.approx(f1)
    top5 = logits.topk(5, dim=1).indices
    assert m["acc5"] == pytest.approx((top5 == targets[:, None]).any(dim=1).float().mean().item())


def test_retrieval_several_captions_per_image():
    # 3 images; captions 0,1 -> image 0; captions 2,3 -> image 1; caption 4 -> image 2.
    text_to_image = torch.tensor([0, 0, 1, 1, 2])
    scores = torch.tensor(
        [  # rows: captions, columns: images
            [0.9, 0.1, 0.0],  # caption 0: own image first
            [0.2, 0.8, 0.1],  # caption 1: image 1 first, own image second
            [0.1, 0.7, 0.3],  # caption 2: own image first
            [0.6, 0.5, 0.0],  # caption 3: own image second
            [0.3, 0.4, 0.2],  # caption 4: own image third
        ]
    )
    m = retrieval_metrics(scores, text_to_image, ks=(1, 2, 5))
    # text -> image ("image retrieval"), per caption: ranks 0, 1, 0, 1, 2
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    # image -> text ("text retrieval"), per image, ANY caption counts:
    # image 0 column (0.9, 0.2, 0.1, 0.6, 0.3): caption 0 first -> hit at 1
    # image 1 column (0.1, 0.8, 0.7, 0.5, 0.4): best own caption (2) is second -> miss at 1, hit at 2
    # image 2 column (0.0, 0.1, 0.3, 0.0, 0.2): caption 2 (0.3) beats caption 4 (0.2) -> second
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(3 / 3)
    assert m["mean_recall@1"] == pytest.approx((2 / 5 + 1 / 3) / 2)
    # k at or above the number of candidates: everything is retrieved
    assert m["image_retrieval_recall@5"] == 1.0 and m["text_retrieval_recall@5"] == 1.0


def test_retrieval_ties_duplicate_captions():
    # Captions 0 (image 1) and 1 (image 0) are the same text, so every image scores them equally.
    # For image 0 the tie puts caption 0 (lower index, another image's) first: a miss at 1.
    scores = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    m = retrieval_metrics(scores, torch.tensor([1, 0, 1]), ks=(1,))
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 2)  # image 1: caption 0 first -> hit
    # text -> image: caption 0 ties on both images -> image 0 first -> miss; caption 1 hits; caption 2 hits
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)


def test_retrieval_needs_a_caption_per_image():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_worst_group_accuracy_over_present_groups():
    # 6 samples, 3 classes (no acc5); groups 0, 0, 1, 1, 1, 7 (group ids need not be contiguous).
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # target 0: hit
            [0.1, 0.9, 0.0],  # target 0: miss
            [0.0, 0.9, 0.1],  # target 1: hit
            [0.0, 0.9, 0.1],  # target 1: hit
            [0.5, 0.5, 0.0],  # target 1: tie with class 0 -> class 0 first: miss
            [0.0, 0.0, 1.0],  # target 2: hit
        ]
    )
    targets, groups = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 7])
    m = classification_metrics(logits, targets, groups)
    assert m["acc1"] == pytest.approx(4 / 6)
    assert (m["acc1_group_0"], m["acc1_group_1"], m["acc1_group_7"]) == pytest.approx((1 / 2, 2 / 3, 1.0))
    assert m["acc1_worst_group"] == pytest.approx(1 / 2)
    assert "acc5_worst_group" not in m and "acc1_group_2" not in m  # a group without samples is not scored
    # Excluding a group (FMoW's "Other" region, say) takes it out of the minimum.
    assert classification_metrics(logits, targets, groups, exclude_groups=(0,))["acc1_worst_group"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no group left"):
        classification_metrics(logits, targets, groups, exclude_groups=(0, 1, 7))


def test_worst_group_top5():
    # 6 classes; Dollar Street's main metric is the worst income group's top-5 accuracy.
    logits = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 4)
    m = classification_metrics(logits, torch.tensor([4, 5, 0, 5]), torch.tensor([3, 3, 9, 9]))
    # group 3: ranks 4, 5 -> top-5 1/2, top-1 0; group 9: ranks 0, 5 -> top-5 1/2, top-1 1/2
    assert m["acc5_group_3"] == m["acc5_group_9"] == pytest.approx(0.5) and m["acc5_worst_group"] == pytest.approx(0.5)
    assert m["acc1_worst_group"] == 0.0 and m["acc1_group_9"] == pytest.approx(0.5)


def test_average_and_group_means_as_datacomp_aggregates():
    from siftbench.eval_suite import summarize

    tasks = {
        "imagenet1k": {"score": 0.30, "groups": ["imagenet"]},
        "imagenetv2": {"score": 0.20, "groups": ["imagenet_shifts"]},
        "imagenet-r": {"score": 0.40, "groups": ["imagenet_shifts"]},
        "vtab/dtd": {"score": 0.10, "groups": ["vtab"]},
        "mscoco": {"score": 0.05, "groups": ["retrieval"]},
        "cars": {"score": 0.15, "groups": []},
    }
    s = summarize(tasks)
    # Average: unweighted over tasks (not over groups): (0.3 + 0.2 + 0.4 + 0.1 + 0.05 + 0.15) / 6
    assert s["average"] == pytest.approx(1.2 / 6) and s["num_tasks"] == 6
    assert s["groups"] == pytest.approx({"imagenet": 0.30, "imagenet_shifts": 0.30, "vtab": 0.10, "retrieval": 0.05})
