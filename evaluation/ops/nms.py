"""Non-maximum suppression with torchvision's semantics (`torchvision.ops.nms` / `batched_nms`).

Greedy: boxes in decreasing score order; a box is dropped when its IoU with an already kept box is strictly
greater than the threshold. Box areas are (x2 - x1) * (y2 - y1) without the +1 of older code, so an empty box
has IoU nan (0 / 0) with another empty box and is never suppressed, as in torchvision's CPU kernel.
`batched_nms` runs NMS per category by moving each category's boxes to a disjoint region of the plane
(torchvision's coordinate trick), so one suppression pass serves every category.
"""

from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[K] areas of [K, 4] xyxy boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """[K1, K2] IoU of xyxy boxes (empty pairs give nan, as torchvision's NMS kernel computes it)."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)  # [K1, K2, 2]
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the kept boxes, in decreasing score order.

    Args:
        boxes: [K, 4] xyxy.
        scores: [K].
        iou_threshold: Boxes overlapping a kept box with IoU > threshold are dropped.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    # One IoU matrix, then a greedy pass on the host: the loop runs once per kept box.
    suppress = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()  # [K, K]; nan compares False
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category `idxs` [K]; indices of the kept boxes in decreasing score order."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + (idxs.to(boxes.dtype) * span)[:, None]  # disjoint region per category
    return nms(shifted, scores, iou_threshold)
