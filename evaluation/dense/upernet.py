"""UperNet decode head and FCN auxiliary head over the BEiT-3 pyramid: the BEiT v2 ADE20K reference model.

Checked against mmsegmentation's `UPerHead`, `PSPModule`, `FCNHead` and `DecodeHead` (mmseg 0.11, which
microsoft/unilm `beit2/semantic_segmentation` builds on; configs `upernet_beit_*`): UperNet over all four
levels (channels = embed dim, pool scales 1/2/3/6, dropout 0.1), FCN auxiliary head on level 2 (one 3x3 conv,
256 channels, no input concat, dropout 0.1, loss weight 0.4). Every conv of the heads is conv (no bias) +
BatchNorm + ReLU (the reference's SyncBN runs as plain BatchNorm per rank here); bilinear resizes use
align_corners=False; the classifier is a 1x1 conv initialised N(0, 0.01).

Legend: B batch, C channels, K classes, H x W input, h x w a level's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import beit3_core
from evaluation.dense.backbone import DenseBackbone
from evaluation.dense.pyramid import LEVELS, DenseConfig

POOL_SCALES = (1, 2, 3, 6)
AUX_CHANNELS = 256
AUX_LEVEL = 2
DROPOUT = 0.1


class ConvBNReLU(nn.Sequential):
    """mmcv's ConvModule with a norm: conv without bias, BatchNorm, ReLU; conv init Kaiming (fan_out, relu)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Classifier(nn.Sequential):
    """Dropout2d then a 1x1 conv to the classes (mmseg `cls_seg`)."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout), conv)


class UperHead(nn.Module):
    """Levels [B, C_i, h_i, w_i] (fine to coarse) -> logits [B, K, h_0, w_0]."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = POOL_SCALES,
        dropout: float = DROPOUT,
    ):
        super().__init__()
        top = in_channels[-1]
        self.psp = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(top, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.cls_seg = Classifier(channels, num_classes, dropout)

    def psp_forward(self, top_BChw: torch.Tensor) -> torch.Tensor:
        pooled = [resize(branch(top_BChw), top_BChw.shape[2:]) for branch in self.psp]
        return self.bottleneck(torch.cat([top_BChw, *pooled], dim=1))

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels[:-1], strict=True)]
        laterals.append(self.psp_forward(levels[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        outs = [outs[0]] + [resize(x, outs[0].shape[2:]) for x in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module):
    """One level [B, C, h, w] -> logits [B, K, h, w] through `num_convs` 3x3 ConvBNReLU (no input concat)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1, dropout: float = DROPOUT):
        super().__init__()
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*(ConvBNReLU(a, b, 3) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        self.cls_seg = Classifier(channels, num_classes, dropout)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x_BChw))


class SegmentationModel(DenseBackbone):
    """BEiT-3 + pyramid + UperNet (+ FCN auxiliary head in training): image [B, 3, H, W] -> logits [B, K, H/4, W/4].

    Args:
        beit3: Backbone built with `normalize_output=False`.
        num_classes: K (ADE20K: 150).
        dense: Pyramid options; the reference is the "beit2" pyramid.
        channels: UperNet width; None = the embed dim, as the BEiT v2 configs set it.
        aux_channels: Width of the auxiliary FCN head.
    """

    def __init__(
        self,
        beit3: beit3_core.BEiT3,
        num_classes: int,
        dense: DenseConfig | None = None,
        channels: int | None = None,
        aux_channels: int = AUX_CHANNELS,
    ):
        super().__init__(beit3, dense or DenseConfig())
        widths = [self.channels[name] for name in LEVELS]
        self.num_classes = num_classes
        self.decode_head = UperHead(widths, channels or beit3.config.embed_dim, num_classes)
        self.auxiliary_head = FCNHead(widths[AUX_LEVEL], aux_channels, num_classes)

    def forward(self, image: torch.Tensor, with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Main logits [B, K, H/4, W/4]; with `with_aux` also the auxiliary logits [B, K, H/16, W/16]."""
        levels = self.features(image)
        ordered = [levels[name] for name in LEVELS]
        logits = self.decode_head(ordered)
        if not with_aux:
            return logits
        return logits, self.auxiliary_head(ordered[AUX_LEVEL])
