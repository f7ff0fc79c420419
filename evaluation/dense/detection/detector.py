"""Mask R-CNN on the BEiT-3 feature pyramid: ViTDet's detector (arXiv 2203.16527) for COCO boxes and masks.

The backbone is `evaluation.dense.DenseBackbone` with ViTDet's simple feature pyramid (p2..p5 from the last
block, plus p6 for the RPN), so the BEiT-3 weights sit at `model.beit3` and fine-tuning loads pretrained or
released checkpoints into it. Checked against detectron2 `modeling/meta_arch/rcnn.py` (GeneralizedRCNN) and
`projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py`; the cascade variant is not implemented.

    model = MaskRCNN(beit3, DetectorConfig(num_classes=80))
    losses = model(images, targets)      # train mode: dict of scalar losses
    detections = model(images)           # eval mode: per image `boxes`, `scores`, `classes`, `mask_probs`
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import beit3_core
from evaluation.dense.backbone import DenseBackbone
from evaluation.dense.detection.roi_heads import ROIHeads, ROIHeadsConfig
from evaluation.dense.detection.rpn import RPN, RPNConfig
from evaluation.dense.pyramid import LEVELS, DenseConfig


@dataclass(kw_only=True)
class DetectorConfig:
    num_classes: int = 80
    out_channels: int = 256
    """Channels of every pyramid level (ViTDet: 256)."""
    window_size: int = 14
    """ViTDet's (and the BEiT-3 paper's) window attention: 14 x 14 windows in every block but `global_blocks`,
    no CLS token; 0 = global attention over CLS + patches in every block (`DenseConfig.window_size`)."""
    global_blocks: tuple[int, ...] | None = None
    """Blocks with global attention; None = ViTDet's ([2, 5, 8, 11] base, [5, 11, 17, 23] large)."""
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if isinstance(self.rpn, dict):
            self.rpn = _nested(RPNConfig, self.rpn, "rpn")
        if isinstance(self.roi_heads, dict):
            self.roi_heads = _nested(ROIHeadsConfig, self.roi_heads, "roi_heads")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DetectorConfig:
        """From the task's head options (`num_classes`, `out_channels`, `rpn: {...}`, `roi_heads: {...}`)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown detector options {sorted(unknown)}")
        return cls(**options)


def _nested(cls, values: dict[str, Any], name: str):
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {name} options {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class MaskRCNN(DenseBackbone):
    """images [B, 3, H, W] (H, W multiples of 64) -> losses (train) or detections (eval)."""

    def __init__(self, beit3: beit3_core.BEiT3, cfg: DetectorConfig):
        dense = DenseConfig(
            pyramid="vitdet",
            out_channels=cfg.out_channels,
            extra_pool_level=True,
            window_size=cfg.window_size,
            global_blocks=cfg.global_blocks,
        )
        super().__init__(beit3, dense)
        self.cfg = cfg
        strides = self.strides
        self.rpn = RPN(cfg.rpn, cfg.out_channels, list(strides.values()))
        self.roi_heads = ROIHeads(cfg.roi_heads, cfg.out_channels, [strides[k] for k in LEVELS], cfg.num_classes)

    def forward(self, image: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        levels = self.features(image)
        image_size = (image.shape[2], image.shape[3])
        roi_features = [levels[name] for name in LEVELS]
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            proposals, losses = self.rpn(list(levels.values()), image_size, [t["boxes"] for t in targets])
            return losses | self.roi_heads.losses(roi_features, proposals, targets)
        proposals, _ = self.rpn(list(levels.values()), image_size, None)
        return self.roi_heads.inference(roi_features, proposals, image_size)


def paste_masks(probs_R28: torch.Tensor, boxes_R4: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mask probabilities [R, m, m] inside their boxes -> [R, H, W] image probabilities (0 outside the box).

    Bilinear, pixel centres mapped into the box as detectron2's `paste_masks_in_image` does (grid_sample,
    align_corners False).
    """
    if len(boxes_R4) == 0:
        return probs_R28.new_zeros(0, height, width)
    x0, y0, x1, y1 = boxes_R4.unbind(dim=1)
    xs = torch.arange(width, device=boxes_R4.device, dtype=probs_R28.dtype) + 0.5
    ys = torch.arange(height, device=boxes_R4.device, dtype=probs_R28.dtype) + 0.5
    gx = (xs[None] - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1  # [R, W]
    gy = (ys[None] - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1  # [R, H]
    grid = torch.stack(
        [gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=3
    )  # [R, H, W, 2]
    return F.grid_sample(probs_R28[:, None], grid, align_corners=False)[:, 0]
