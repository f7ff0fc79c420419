"""Image views for VQ-KD training and evaluation, in numpy + torch (no torchvision).

Training views follow the BEiT v2 tokenizer recipe (microsoft/unilm `beit2/run_vqkd_training.py`):
RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3), bicubic) + horizontal flip, no colour jitter. The crop
box sampler is the same rejection scheme as torchvision's `RandomResizedCrop.get_params` (10 tries, then a
centre crop clamped to the ratio range), re-derived here so no torchvision is needed.

Images come in as uint8 numpy arrays [H, W, 3] (one image) or [B, H, W, 3] (a batch) and leave as float
tensors [B, 3, S, S] in [0, 1].
"""

import numpy as np
import torch
import torch.nn.functional as F

from beit3_core.data.views import random_resized_box

__all__ = ["random_resized_crop_box", "render_view", "resize_batch", "training_views"]

Box = tuple[int, int, int, int]  # top, left, height, width


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """A crop covering `scale` of the area with aspect ratio (w/h) log-uniform in `ratio` (the same sampler as the
    stored pretraining views, with the wider default scale of tokenizer training)."""
    return random_resized_box(height, width, rng, scale, ratio)


def _to_float_chw(image_HW3: np.ndarray) -> torch.Tensor:
    if image_HW3.dtype != np.uint8 or image_HW3.ndim != 3 or image_HW3.shape[2] != 3:
        raise ValueError(f"expected a uint8 image [H, W, 3], got {image_HW3.dtype} {image_HW3.shape}")
    return torch.from_numpy(np.ascontiguousarray(image_HW3)).permute(2, 0, 1).float().div_(255)  # [3, H, W]


def _resize(x_BCHW: torch.Tensor, size: int) -> torch.Tensor:
    if x_BCHW.shape[-2:] == (size, size):
        return x_BCHW
    out = F.interpolate(x_BCHW, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0, 1)  # bicubic overshoots at edges; the tokenizer contract is [0, 1]


def render_view(image_HW3: np.ndarray, box: Box, flip: bool, size: int) -> torch.Tensor:
    """Crops `box`, resizes to `size` x `size` (bicubic, antialiased), optionally mirrors: [3, size, size]."""
    top, left, crop_h, crop_w = box
    view = _to_float_chw(image_HW3[top : top + crop_h, left : left + crop_w])
    view = _resize(view[None], size)[0]
    return view.flip(-1) if flip else view


def training_views(
    images_BHW3: np.ndarray, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0)
) -> torch.Tensor:
    """One random-resized-crop + flip view per image: [B, 3, size, size] in [0, 1]."""
    views = []
    for image in images_BHW3:
        box = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale)
        views.append(render_view(image, box, bool(rng.random() < 0.5), size))
    return torch.stack(views)


def resize_batch(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Whole images (uint8 [B, H, W, 3] or float [B, 3, H, W] in [0, 1]) resized to [B, 3, size, size]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return _resize(images.float(), size)
