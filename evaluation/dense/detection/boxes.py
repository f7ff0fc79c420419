"""Box arithmetic of the two-stage detector: anchors, the delta coder, IoU matching and balanced sampling.

Follows detectron2 (`modeling/anchor_generator.py` DefaultAnchorGenerator with offset 0,
`modeling/box_regression.py` Box2BoxTransform, `modeling/matcher.py` Matcher,
`modeling/sampling.py` subsample_labels), the components ViTDet's Mask R-CNN configs use. Boxes are xyxy in
input pixels; K boxes, A anchors, M ground-truth boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from evaluation.ops import box_iou

DELTA_CLAMP = math.log(1000.0 / 16)
"""Largest predicted log-scale change (detectron2 `_DEFAULT_SCALE_CLAMP`), so exp() cannot overflow."""


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """[len(sizes) * len(aspect_ratios), 4] anchors centred on 0 (area size^2, height / width = ratio)."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(cell_KA4: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """[H * W * A, 4] anchors of one level, ordered (y, x, anchor) like the head's outputs."""
    shift_x = torch.arange(width, dtype=torch.float32) * stride
    shift_y = torch.arange(height, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (shifts + cell_KA4[None]).reshape(-1, 4)


class BoxCoder:
    """Deltas (dx, dy, dw, dh) of a target box relative to a reference box, scaled by `weights`."""

    def __init__(self, weights: Sequence[float]):
        self.weights = tuple(float(w) for w in weights)

    def encode(self, reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        wx, wy, ww, wh = self.weights
        rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
        tw, th = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        tx, ty = target[:, 0] + 0.5 * tw, target[:, 1] + 0.5 * th
        return torch.stack(
            [wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """deltas [K, 4 * j] (j boxes per reference, e.g. one per class) -> boxes [K, 4 * j]."""
        wx, wy, ww, wh = self.weights
        reference = reference.to(deltas.dtype)
        rw, rh = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        rx, ry = reference[:, 0] + 0.5 * rw, reference[:, 1] + 0.5 * rh
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw, dh = (deltas[:, 2::4] / ww).clamp(max=DELTA_CLAMP), (deltas[:, 3::4] / wh).clamp(max=DELTA_CLAMP)
        cx, cy = dx * rw[:, None] + rx[:, None], dy * rh[:, None] + ry[:, None]
        w, h = torch.exp(dw) * rw[:, None], torch.exp(dh) * rh[:, None]
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)  # [K, j, 4]
        return boxes.reshape(deltas.shape)


class Matcher:
    """Assigns each prediction its best ground truth and a label from IoU thresholds.

    `thresholds` [t1, ..., tn] split IoU into n + 1 intervals labelled `labels` (1 foreground, 0 background,
    -1 ignored). With `allow_low_quality_matches`, each ground truth's best predictions are foreground too (RPN).
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool = False):
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"need one more label than thresholds, got {labels} for {thresholds}")
        self.thresholds = [-math.inf, *thresholds, math.inf]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou_MK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """iou [M, K] -> (matched ground-truth index [K], label [K]); no ground truth = all background."""
        num_preds = iou_MK.shape[1]
        if iou_MK.shape[0] == 0:
            zeros = torch.zeros(num_preds, dtype=torch.long, device=iou_MK.device)
            return zeros, torch.full_like(zeros, self.labels[0])
        best_iou, matches = iou_MK.max(dim=0)
        labels = torch.zeros_like(matches)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:], strict=True):
            labels[(best_iou >= low) & (best_iou < high)] = label
        if self.allow_low_quality_matches:
            best_per_gt = iou_MK.max(dim=1, keepdim=True).values  # [M, 1]
            _, pred_index = torch.nonzero((iou_MK == best_per_gt) & (best_per_gt > 0), as_tuple=True)
            labels[pred_index] = 1
        return matches, labels


def sample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, background: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random foreground and background indices: at most `positive_fraction` of `num_samples` foreground.

    Foreground = label not in (-1, background); torch's generator draws the subsets (seeded by the loop).
    """
    positive = torch.nonzero((labels != -1) & (labels != background)).squeeze(1)
    negative = torch.nonzero(labels == background).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """xyxy boxes (any leading shape, last dim a multiple of 4) clipped to the image."""
    per_box = boxes.reshape(*boxes.shape[:-1], -1, 4)
    x, y = per_box[..., 0::2].clamp(0, width), per_box[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1).reshape(boxes.shape)


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """[K1, K2] IoU with empty boxes at 0 (matching needs numbers, not the nan of NMS)."""
    return torch.nan_to_num(box_iou(boxes1, boxes2), nan=0.0)
