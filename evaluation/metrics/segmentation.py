"""Semantic segmentation metrics from a dataset-level confusion matrix: mIoU, aAcc, mAcc (ADE20K).

Semantics of mmsegmentation's `eval_metrics` (the BEiT v2 ADE20K reference, mmseg 0.11): per class c, summed
over every evaluated image, I_c = |pred = c and gt = c|, P_c = |pred = c|, G_c = |gt = c| after removing the
pixels whose ground truth is the ignore index; U_c = P_c + G_c - I_c. IoU_c = I_c / U_c, and mIoU is the mean
over the classes with U_c > 0 (a class absent from both prediction and ground truth is left out; one that is
only predicted counts with IoU 0). aAcc = sum I / sum G; mAcc = mean of I_c / G_c over classes with G_c > 0.
Values are in percent.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """[K, K] int64 counts, rows = ground-truth class, columns = predicted class.

    Args:
        pred: Predicted class per pixel, values in [0, K), any integer dtype.
        gt: Ground-truth class per pixel (same shape), values in [0, K) or `ignore_index`.
        num_classes: K.
        ignore_index: Ground-truth value whose pixels are not scored.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    valid = gt != ignore_index
    gt_v, pred_v = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    for name, values in (("ground truth", gt_v), ("prediction", pred_v)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class ids in [{values.min()}, {values.max()}], outside [0, {num_classes})")
    counts = np.bincount(gt_v * num_classes + pred_v, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float | list[float]]:
    """`mIoU`, `aAcc`, `mAcc` (percent) and the per-class `IoU` / `Acc` lists (NaN where undefined)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    total = confusion.sum()
    if total == 0:
        raise ValueError("no labelled pixels to score (every ground-truth pixel is ignored)")
    intersection = np.diag(confusion)
    predicted, labelled = confusion.sum(axis=0), confusion.sum(axis=1)
    union = predicted + labelled - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        acc = np.where(labelled > 0, intersection / labelled, np.nan)
    return {
        "mIoU": 100.0 * float(np.nanmean(iou)),
        "aAcc": 100.0 * float(intersection.sum() / total),
        "mAcc": 100.0 * float(np.nanmean(acc)),
        "IoU": [100.0 * float(v) for v in iou],
        "Acc": [100.0 * float(v) for v in acc],
    }
