"""Region proposal network (Faster R-CNN arXiv 1506.01497) as ViTDet configures it.

Checked against detectron2 `modeling/proposal_generator/rpn.py` (`RPN`, `StandardRPNHead`) and
`projects/ViTDet/configs/common/coco_loader_lsj.py` + `common/models/mask_rcnn_vitdet.py`: a head of
`num_convs` 3x3 convs (ViTDet: 2) shared over the levels, then 1x1 objectness and deltas per anchor; anchors
matched with IoU 0.3 / 0.7 (plus each ground truth's best anchors), 256 sampled per image at half foreground;
loss = BCE over the sampled anchors + L1 on the foreground deltas, both divided by the number sampled;
proposals = per level the `pre_nms_topk` best, decoded, clipped, non-empty, NMS 0.7 across levels (levels
kept apart), the `post_nms_topk` best per image.

Legend: B images, A anchors per location, L levels, K proposals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.dense.detection.boxes import (
    BoxCoder,
    Matcher,
    cell_anchors,
    clip_boxes,
    grid_anchors,
    pairwise_iou,
    sample_labels,
)
from evaluation.ops import batched_nms


@dataclass(kw_only=True)
class RPNConfig:
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    """One anchor size per level, finest first (detectron2 / ViTDet at 1024 px: 32..512 on p2..p6)."""
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    num_convs: int = 2
    """3x3 convs of the head (ViTDet: 2; the original Faster R-CNN: 1)."""
    iou_thresholds: tuple[float, float] = (0.3, 0.7)
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk: tuple[int, int] = (2000, 1000)
    """Per level, (training, inference)."""
    post_nms_topk: tuple[int, int] = (1000, 1000)
    """Per image, (training, inference)."""
    nms_threshold: float = 0.7


class RPNHead(nn.Module):
    """Shared convs + objectness logits [B, A, h, w] and deltas [B, 4A, h, w] per level."""

    def __init__(self, channels: int, num_anchors: int, num_convs: int):
        super().__init__()
        convs = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*convs)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    def __init__(self, cfg: RPNConfig, channels: int, strides: Sequence[int]):
        super().__init__()
        if len(cfg.anchor_sizes) != len(strides):
            raise ValueError(f"{len(strides)} RPN levels need as many anchor sizes, got {cfg.anchor_sizes}")
        self.cfg, self.strides = cfg, tuple(strides)
        self.cells = [cell_anchors([size], cfg.aspect_ratios) for size in cfg.anchor_sizes]
        self.head = RPNHead(channels, len(cfg.aspect_ratios), cfg.num_convs)
        self.matcher = Matcher(cfg.iou_thresholds, (0, -1, 1), allow_low_quality_matches=True)
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(
        self, features: Sequence[torch.Tensor], image_size: tuple[int, int], gt_boxes: list[torch.Tensor] | None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """(proposals per image [K, 4], losses when `gt_boxes` is given)."""
        logits, deltas = self.head(features)
        anchors = [
            grid_anchors(cell, stride, x.shape[2], x.shape[3]).to(x.device)
            for cell, stride, x in zip(self.cells, self.strides, features, strict=True)
        ]
        # Per level: [B, A, h, w] -> [B, h*w*A] and [B, 4A, h, w] -> [B, h*w*A, 4] (the anchors' order).
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [
            d.view(d.shape[0], -1, 4, d.shape[2], d.shape[3]).permute(0, 3, 4, 1, 2).flatten(1, 3) for d in deltas
        ]
        proposals = self._proposals(anchors, logits, deltas, image_size)
        losses = self._losses(anchors, logits, deltas, gt_boxes) if gt_boxes is not None else {}
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, anchors, logits, deltas, image_size) -> list[torch.Tensor]:
        mode = 0 if self.training else 1
        height, width = image_size
        out = []
        for b in range(logits[0].shape[0]):
            boxes, scores, levels = [], [], []
            for level, (anchors_A4, logits_B, deltas_B) in enumerate(zip(anchors, logits, deltas, strict=True)):
                k = min(self.cfg.pre_nms_topk[mode], logits_B.shape[1])
                top_scores, index = logits_B[b].topk(k)
                decoded = self.coder.decode(deltas_B[b, index], anchors_A4[index])
                boxes.append(clip_boxes(decoded, height, width))
                scores.append(top_scores)
                levels.append(torch.full((k,), level, dtype=torch.long, device=top_scores.device))
            boxes_K4, scores_K, levels_K = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            valid = ((boxes_K4[:, 2] - boxes_K4[:, 0]) > 0) & ((boxes_K4[:, 3] - boxes_K4[:, 1]) > 0)
            valid &= torch.isfinite(boxes_K4).all(dim=1) & torch.isfinite(scores_K)
            boxes_K4, scores_K, levels_K = boxes_K4[valid], scores_K[valid], levels_K[valid]
            keep = batched_nms(boxes_K4, scores_K, levels_K, self.cfg.nms_threshold)[: self.cfg.post_nms_topk[mode]]
            out.append(boxes_K4[keep].detach())
        return out

    def _losses(self, anchors, logits, deltas, gt_boxes) -> dict[str, torch.Tensor]:
        anchors_A4 = torch.cat(anchors)
        logits_BA, deltas_BA4 = torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
        labels, targets = [], []
        for gt in gt_boxes:
            matches, label = self.matcher(pairwise_iou(gt, anchors_A4))
            pos, neg = sample_labels(label, self.cfg.batch_size_per_image, self.cfg.positive_fraction, 0)
            sampled = torch.full_like(label, -1)
            sampled[pos], sampled[neg] = 1, 0
            labels.append(sampled)
            matched = gt[matches] if len(gt) else torch.zeros_like(anchors_A4)
            targets.append(self.coder.encode(anchors_A4, matched))
        labels_BA, targets_BA4 = torch.stack(labels), torch.stack(targets)
        foreground, used = labels_BA == 1, labels_BA >= 0
        normalizer = self.cfg.batch_size_per_image * len(gt_boxes)
        loss_cls = F.binary_cross_entropy_with_logits(
            logits_BA[used], labels_BA[used].to(logits_BA.dtype), reduction="sum"
        )
        loss_loc = F.l1_loss(deltas_BA4[foreground], targets_BA4[foreground], reduction="sum")
        return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}
