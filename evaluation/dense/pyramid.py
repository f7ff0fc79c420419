"""Four-level feature pyramids (strides 4, 8, 16, 32) over the stride-16 BEiT-3 block maps.

Two variants, chosen by `DenseConfig.pyramid`:

- "beit2" (default; the ADE20K reference, microsoft/unilm `beit2/semantic_segmentation` backbone): one map per
  level from four different blocks. Level 0: two stacked 2x transposed convs with BatchNorm + GELU between
  (stride 4); level 1: one 2x transposed conv (stride 8); level 2: identity (16); level 3: 2x2 max-pool (32).
  Every level keeps D channels. The reference uses SyncBN on 8 GPUs; here it is plain BatchNorm per rank.
- "vitdet" (the COCO reference, detectron2 `SimpleFeaturePyramid` in `projects/ViTDet`): every level from the
  LAST block map. Scale 4: transposed conv D -> D/2, channel LayerNorm, GELU, transposed conv D/2 -> D/4;
  scale 2: transposed conv D -> D/2; scale 1: identity; scale 0.5: 2x2 max-pool; then per level a 1x1 conv and
  a 3x3 conv to `out_channels` (256), each followed by channel LayerNorm (no conv bias). Optionally a fifth
  level "p6" = stride-2 subsampling of p5 (detectron2 `LastLevelMaxPool`, used by the RPN).

Legend: B batch, D embed dim, C output channels, h x w the stride-16 grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("p2", "p3", "p4", "p5")
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
VITDET_CHANNELS = 256


@dataclass(kw_only=True)
class DenseConfig:
    """How the backbone's block maps become a pyramid."""

    pyramid: Literal["beit2", "vitdet"] = "beit2"
    """"beit2": BEiT v2's deconv/pool pyramid over four blocks (ADE20K reference, default); "vitdet": ViTDet's
    simple feature pyramid over the last block (COCO reference)."""
    out_indices: tuple[int, ...] | None = None
    """0-based blocks read. None: "beit2" the scaled reference [3, 5, 7, 11] (base), "vitdet" the last block."""
    out_channels: int = VITDET_CHANNELS
    """Channels of every "vitdet" level; "beit2" levels always keep the embed dim."""
    extra_pool_level: bool = False
    """"vitdet" only: add "p6" (stride 64) by subsampling p5, as detectron2's LastLevelMaxPool."""
    window_size: int = 0
    """0 (default; BEiT v2's segmentation backbone): every block attends globally over CLS + patches. > 0
    (ViTDet): every block but `global_blocks` attends within window_size x window_size windows of the patch grid,
    and there is no CLS token (ViTDet drops it). No parameter changes: released weights load either way."""
    global_blocks: tuple[int, ...] | None = None
    """0-based blocks that keep global attention when window_size > 0. None: ViTDet's, the last block of each
    quarter of the depth ([2, 5, 8, 11] for 12 layers, [5, 11, 17, 23] for 24)."""

    def __post_init__(self) -> None:
        if self.pyramid not in ("beit2", "vitdet"):
            raise ValueError(f"pyramid must be 'beit2' or 'vitdet', got {self.pyramid!r}")
        if self.out_indices is not None:
            self.out_indices = tuple(int(i) for i in self.out_indices)
            needed = 4 if self.pyramid == "beit2" else 1
            if len(self.out_indices) != needed:
                raise ValueError(f"pyramid {self.pyramid!r} reads {needed} blocks, got out_indices {self.out_indices}")
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels}")
        if self.extra_pool_level and self.pyramid != "vitdet":
            raise ValueError("extra_pool_level (p6) belongs to the 'vitdet' pyramid")
        if self.window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention), got {self.window_size}")
        if self.global_blocks is not None:
            if not self.window_size:
                raise ValueError("global_blocks needs window_size > 0 (without windows every block is global)")
            self.global_blocks = tuple(sorted({int(i) for i in self.global_blocks}))

    def resolved_out_indices(self, num_layers: int) -> tuple[int, ...]:
        from evaluation.dense.features import default_out_indices

        if self.out_indices is not None:
            return self.out_indices
        return default_out_indices(num_layers) if self.pyramid == "beit2" else (num_layers - 1,)

    def resolved_global_blocks(self, num_layers: int) -> tuple[int, ...]:
        """The blocks with global attention (every block when window_size is 0)."""
        if not self.window_size:
            return tuple(range(num_layers))
        if self.global_blocks is None:
            return tuple(sorted({max(0, round(num_layers * k / 4) - 1) for k in range(1, 5)}))
        if not all(0 <= i < num_layers for i in self.global_blocks):
            raise ValueError(f"global_blocks {list(self.global_blocks)} must lie in [0, {num_layers})")
        return self.global_blocks

    def channels(self, embed_dim: int) -> dict[str, int]:
        """Channels of each output level."""
        width = embed_dim if self.pyramid == "beit2" else self.out_channels
        names = LEVELS + (("p6",) if self.extra_pool_level else ())
        return dict.fromkeys(names, width)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of [B, C, H, W] (detectron2's `LayerNorm` for conv maps, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x_BCHW.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class BEiT2Pyramid(nn.Module):
    """Four block maps [B, D, h, w] -> levels at strides 4, 8, 16, 32 with D channels each."""

    def __init__(self, embed_dim: int):
        super().__init__()
        dim = embed_dim
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, maps: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        ops = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return {name: op(x) for name, op, x in zip(LEVELS, ops, maps, strict=True)}


def _conv_ln(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2's c2_xavier_fill
    return nn.Sequential(conv, ChannelLayerNorm(out_channels))


class SimpleFeaturePyramid(nn.Module):
    """The last block map [B, D, h, w] -> levels at strides 4, 8, 16, 32 (and 64) with C channels each."""

    def __init__(self, embed_dim: int, out_channels: int = VITDET_CHANNELS, extra_pool_level: bool = False):
        super().__init__()
        dim = embed_dim
        if dim % 4:
            raise ValueError(f"the vitdet pyramid needs an embed dim divisible by 4, got {dim}")
        self.stages = nn.ModuleList()
        for scale in (4.0, 2.0, 1.0, 0.5):
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                    ChannelLayerNorm(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
                ]
                width = dim // 4
            elif scale == 2.0:
                layers, width = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
            elif scale == 1.0:
                layers, width = [], dim
            else:
                layers, width = [nn.MaxPool2d(kernel_size=2, stride=2)], dim
            layers += [*_conv_ln(width, out_channels, 1), *_conv_ln(out_channels, out_channels, 3)]
            self.stages.append(nn.Sequential(*layers))
        self.extra_pool_level = extra_pool_level

    def forward(self, maps: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        last_BDhw = maps[-1]
        out = {name: stage(last_BDhw) for name, stage in zip(LEVELS, self.stages, strict=True)}
        if self.extra_pool_level:
            out["p6"] = F.max_pool2d(out["p5"], kernel_size=1, stride=2)
        return out


def build_pyramid(cfg: DenseConfig, embed_dim: int) -> nn.Module:
    if cfg.pyramid == "beit2":
        return BEiT2Pyramid(embed_dim)
    return SimpleFeaturePyramid(embed_dim, cfg.out_channels, cfg.extra_pool_level)
