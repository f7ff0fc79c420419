"""mIoU / aAcc / mAcc from a confusion matrix: a hand-computed fixture and a torchmetrics cross-check."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from evaluation.metrics.segmentation import confusion_matrix, segmentation_metrics


def test_hand_computed_fixture_with_absent_classes():
    # 4 classes; class 2 is predicted but never labelled (IoU 0, counted); class 3 appears nowhere (left out);
    # the ignored pixel's prediction (0) must not count for class 0.
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 2, 1, 1], [0, 0, 1, 2]])
    conf = confusion_matrix(pred, gt, num_classes=4)
    metrics = segmentation_metrics(conf)
    # class 0: I 2, G 3, P 2 -> U 3; class 1: I 3, G 4, P 3 -> U 4; class 2: I 0, G 0, P 2 -> U 2.
    assert metrics["mIoU"] == pytest.approx(100 * (2 / 3 + 3 / 4 + 0) / 3)
    assert metrics["aAcc"] == pytest.approx(100 * 5 / 7)
    assert metrics["mAcc"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)  # class 2 has no labelled pixel
    assert metrics["IoU"][2] == 0.0 and math.isnan(metrics["IoU"][3])
    assert math.isnan(metrics["Acc"][2]) and math.isnan(metrics["Acc"][3])


def test_confusion_matrices_add_over_images():
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 5, (7, 9)), rng.integers(0, 5, (7, 9))) for _ in range(3)]
    summed = sum(confusion_matrix(p, g, 5) for p, g in images)
    whole = confusion_matrix(
        np.concatenate([p.ravel() for p, _ in images]), np.concatenate([g.ravel() for _, g in images]), 5
    )
    assert np.array_equal(summed, whole) and summed.sum() == 3 * 63


def test_dataset_level_metrics_equal_torchmetrics():
    rng = np.random.default_rng(1)
    num_classes = 12
    iou = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="macro")
    a_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=255, average="micro")
    # torchmetrics' macro accuracy also averages in classes that are only predicted (accuracy 0); mmseg leaves
    # classes without labelled pixels out of mAcc, so compare per class over the labelled classes.
    m_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=255, average="none")
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for shape in ((20, 30), (17, 11), (32, 8)):
        # Classes 9..11 never appear in the ground truth; 10 and 11 are never predicted either.
        gt = rng.integers(0, 9, shape)
        gt[rng.random(shape) < 0.2] = 255
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, 10, shape))
        pred[pred == 255] = 0
        conf += confusion_matrix(pred, gt, num_classes)
        for metric in (iou, a_acc, m_acc):
            metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    ours = segmentation_metrics(conf)
    assert ours["mIoU"] == pytest.approx(100 * iou.compute().item(), abs=1e-4)
    assert ours["aAcc"] == pytest.approx(100 * a_acc.compute().item(), abs=1e-4)
    labelled = conf.sum(axis=1) > 0
    assert labelled.sum() == 9
    assert ours["mAcc"] == pytest.approx(100 * m_acc.compute()[labelled].mean().item(), abs=1e-4)


def test_out_of_range_classes_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="ground truth holds class ids"):
        confusion_matrix(np.zeros((2, 2)), np.array([[0, 7], [1, 1]]), num_classes=4)
    with pytest.raises(ValueError, match="prediction holds class ids"):
        confusion_matrix(np.array([[0, 4], [1, 1]]), np.zeros((2, 2)), num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=4)
    with pytest.raises(ValueError, match="no labelled pixels"):
        segmentation_metrics(confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 255), num_classes=4))
