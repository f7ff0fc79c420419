"""Box and mask heads of Mask R-CNN (arXiv 1703.06870) with ViTDet's LayerNorm conv heads.

Checked against detectron2 `modeling/roi_heads/roi_heads.py` (StandardROIHeads), `box_head.py`
(FastRCNNConvFCHead), `fast_rcnn.py` (FastRCNNOutputLayers), `mask_head.py` (MaskRCNNConvUpsampleHead) and
`modeling/poolers.py` (ROIPooler, ROIAlignV2), configured as `projects/ViTDet/configs/common/models/
mask_rcnn_vitdet.py`: proposals plus the ground-truth boxes are matched at IoU 0.5 and 512 per image are
sampled at a quarter foreground; each box is pooled (RoIAlign aligned, adaptive sampling) from its FPN level
(canonical 224 px at level 4); the box head is 4 convs + LayerNorm + ReLU and one fc (1024), predicting K + 1
class logits and class-specific deltas (weights 10, 10, 5, 5); the mask head is 4 convs + LayerNorm + ReLU, a
2x transposed conv and a 1x1 conv to K masks of 28 x 28 for the foreground boxes. Losses: cross entropy over
the sampled boxes, L1 on the foreground deltas divided by the number sampled, per-pixel BCE of the ground-truth
class's mask against the ground-truth mask cropped by RoIAlign (threshold 0.5). Inference: softmax scores
above 0.05, per-class NMS 0.5, the best 100 per image, then the masks of those boxes.

Legend: K classes (no background), R boxes, C channels, S pooled side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.dense.detection.boxes import BoxCoder, Matcher, clip_boxes, pairwise_iou, sample_labels
from evaluation.dense.pyramid import ChannelLayerNorm
from evaluation.ops import batched_nms, roi_align
from evaluation.ops.roi_align import level_of_boxes


@dataclass(kw_only=True)
class ROIHeadsConfig:
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5
    box_pool_size: int = 7
    mask_pool_size: int = 14
    canonical_box_size: float = 224.0
    """Box side assigned to level 4 (stride 16) when choosing the pooling level."""
    conv_dim: int = 256
    num_box_convs: int = 4
    fc_dim: int = 1024
    num_mask_convs: int = 4
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    mask_on: bool = True


def conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias: LayerNorm follows) + channel LayerNorm + ReLU, detectron2's `Conv2d(norm="LN")`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), ChannelLayerNorm(out_channels), nn.ReLU()
    )


def conv_stack(in_channels: int, dim: int, num_convs: int) -> tuple[nn.Sequential, int]:
    """`num_convs` conv + LN + ReLU blocks of width `dim`; returns them and their output channels."""
    blocks = [conv_norm_relu(in_channels if i == 0 else dim, dim) for i in range(num_convs)]
    return nn.Sequential(*blocks), dim if num_convs else in_channels


class MultiLevelRoIAlign(nn.Module):
    """Pools each box from its FPN level (detectron2 `ROIPooler` with ROIAlignV2)."""

    def __init__(self, output_size: int, strides: Sequence[int], canonical_box_size: float):
        super().__init__()
        self.output_size, self.strides, self.canonical = output_size, tuple(strides), canonical_box_size
        self.min_level = int(torch.tensor(float(self.strides[0])).log2())
        self.max_level = self.min_level + len(self.strides) - 1

    def forward(self, features: Sequence[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """features per level [B, C, h, w], boxes per image [R_b, 4] -> [sum R_b, C, S, S]."""
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = level_of_boxes(rois[:, 1:], self.min_level, self.max_level, self.canonical) - self.min_level
        out = features[0].new_zeros(len(rois), features[0].shape[1], self.output_size, self.output_size)
        for level, (x, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel():
                out[index] = roi_align(x, rois[index], self.output_size, 1.0 / stride, sampling_ratio=0)
        return out


class BoxHead(nn.Module):
    """[R, C, 7, 7] -> class logits [R, K + 1] and class-specific deltas [R, 4K]."""

    def __init__(self, cfg: ROIHeadsConfig, channels: int, num_classes: int):
        super().__init__()
        self.convs, width = conv_stack(channels, cfg.conv_dim, cfg.num_box_convs)
        self.fc = nn.Linear(width * cfg.box_pool_size**2, cfg.fc_dim)
        self.cls_score = nn.Linear(cfg.fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(cfg.fc_dim, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc(self.convs(pooled).flatten(1)))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """[R, C, 14, 14] -> mask logits [R, K, 28, 28]."""

    def __init__(self, cfg: ROIHeadsConfig, channels: int, num_classes: int):
        super().__init__()
        self.convs, width = conv_stack(channels, cfg.conv_dim, cfg.num_mask_convs)
        self.deconv = nn.ConvTranspose2d(width, cfg.conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(cfg.conv_dim, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.predictor(F.relu(self.deconv(self.convs(pooled))))


class ROIHeads(nn.Module):
    def __init__(self, cfg: ROIHeadsConfig, channels: int, strides: Sequence[int], num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.box_pooler = MultiLevelRoIAlign(cfg.box_pool_size, strides, cfg.canonical_box_size)
        self.box_head = BoxHead(cfg, channels, num_classes)
        self.matcher = Matcher((cfg.iou_threshold,), (0, 1))
        self.coder = BoxCoder(cfg.box_weights)
        if cfg.mask_on:
            self.mask_pooler = MultiLevelRoIAlign(cfg.mask_pool_size, strides, cfg.canonical_box_size)
            self.mask_head = MaskHead(cfg, channels, num_classes)

    def losses(
        self, features: Sequence[torch.Tensor], proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Training losses; `targets` per image: `boxes` [M, 4], `classes` [M] (0..K-1), `masks` [M, H, W]."""
        boxes, classes, matched_gt = self._sample(proposals, targets)
        logits, deltas = self.box_head(self.box_pooler(features, boxes))
        labels, ref = torch.cat(classes), torch.cat(boxes)  # label K = background
        foreground = torch.nonzero(labels < self.num_classes).squeeze(1)
        # An image whose objects the crop removed has no ground truth: its boxes are all background.
        gt_boxes = torch.cat(
            [
                t["boxes"][m] if len(t["boxes"]) else ref.new_zeros(len(m), 4)
                for t, m in zip(targets, matched_gt, strict=True)
            ]
        )
        target_deltas = self.coder.encode(ref[foreground], gt_boxes[foreground])
        fg_deltas = deltas.view(len(ref), self.num_classes, 4)[foreground, labels[foreground]]
        losses = {
            "loss_cls": F.cross_entropy(logits, labels),
            "loss_box_reg": F.l1_loss(fg_deltas, target_deltas, reduction="sum") / max(len(labels), 1),
        }
        if self.cfg.mask_on:
            losses["loss_mask"] = self._mask_loss(features, boxes, classes, matched_gt, targets)
        return losses

    @torch.no_grad()
    def _sample(self, proposals, targets) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: sampled boxes (proposals + ground truth), their labels (K = background), matched gt index."""
        boxes, classes, matched = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt = target["boxes"]
            candidates = torch.cat([props, gt])
            matches, label = self.matcher(pairwise_iou(gt, candidates))
            cls = target["classes"][matches] if len(gt) else torch.zeros_like(matches)
            cls = torch.where(label == 1, cls, torch.full_like(cls, self.num_classes))
            pos, neg = sample_labels(cls, self.cfg.batch_size_per_image, self.cfg.positive_fraction, self.num_classes)
            keep = torch.cat([pos, neg])
            boxes.append(candidates[keep])
            classes.append(cls[keep])
            matched.append(matches[keep])
        return boxes, classes, matched

    def _mask_loss(self, features, boxes, classes, matched_gt, targets) -> torch.Tensor:
        fg_boxes, fg_classes = [], []
        side = 2 * self.cfg.mask_pool_size
        masks_out = []
        for bx, cls, m, t in zip(boxes, classes, matched_gt, targets, strict=True):
            fg = torch.nonzero(cls < self.num_classes).squeeze(1)
            fg_boxes.append(bx[fg])
            fg_classes.append(cls[fg])
            # Targets: the matched ground-truth mask cropped to the box and resampled (detectron2 BitMasks).
            gt_masks = t["masks"][m[fg]].to(bx.dtype)[:, None]  # [R_b, 1, H, W]
            rois = torch.cat([torch.arange(len(fg), device=bx.device, dtype=bx.dtype)[:, None], bx[fg]], dim=1)
            masks_out.append(roi_align(gt_masks, rois, side, 1.0, sampling_ratio=0)[:, 0] >= 0.5)
        num_fg = sum(len(c) for c in fg_classes)
        if num_fg == 0:
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        logits = self.mask_head(self.mask_pooler(features, fg_boxes))  # [R, K, 28, 28]
        cls = torch.cat(fg_classes)
        logits = logits[torch.arange(len(cls), device=cls.device), cls]
        return F.binary_cross_entropy_with_logits(logits, torch.cat(masks_out).to(logits.dtype))

    @torch.no_grad()
    def inference(
        self, features: Sequence[torch.Tensor], proposals: list[torch.Tensor], image_size: tuple[int, int]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: `boxes` [R, 4], `scores` [R], `classes` [R], and `mask_probs` [R, 28, 28] with masks on."""
        logits, deltas = self.box_head(self.box_pooler(features, proposals))
        scores_all = F.softmax(logits, dim=1)[:, :-1]  # [sum R, K]
        decoded = clip_boxes(self.coder.decode(deltas, torch.cat(proposals)), *image_size)
        results, start = [], 0
        for props in proposals:
            n = len(props)
            scores_RK, boxes_RK4 = scores_all[start : start + n], decoded[start : start + n].view(n, -1, 4)
            start += n
            proposal_index, cls = torch.nonzero(scores_RK > self.cfg.score_threshold, as_tuple=True)
            boxes, scores = boxes_RK4[proposal_index, cls], scores_RK[proposal_index, cls]
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes, scores, cls = boxes[valid], scores[valid], cls[valid]
            keep = batched_nms(boxes, scores, cls, self.cfg.nms_threshold)[: self.cfg.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "classes": cls[keep]})
        if self.cfg.mask_on:
            boxes = [r["boxes"] for r in results]
            if sum(len(b) for b in boxes):
                probs = self.mask_head(self.mask_pooler(features, boxes)).sigmoid()
                cls = torch.cat([r["classes"] for r in results])
                probs = probs[torch.arange(len(cls), device=cls.device), cls]
            else:
                probs = features[0].new_zeros(0, 2 * self.cfg.mask_pool_size, 2 * self.cfg.mask_pool_size)
            for r, p in zip(results, probs.split([len(b) for b in boxes]), strict=True):
                r["mask_probs"] = p
        return results
