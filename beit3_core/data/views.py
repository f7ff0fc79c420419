"""Stored image views: sampling, rendering and normalization shared by preprocessing and training.

BEiT v2 (arXiv:2208.06366) and BEiT-3 (arXiv:2208.10442) feed the VQ-KD tokenizer and the model two renders of
ONE RandomResizedCrop box per sample (microsoft/unilm `beit2/datasets.py`, `transforms.py`). Here the tokens
are computed offline (spec tokenizer_mdm.md section 2, option B): preprocessing draws K view parameters per
image, renders them with `render_view`, tokenizes, and stores parameters and tokens; the training loader
replays the same `render_view` on the same stored bytes. The replay is exact only if:

1. Both sides decode the SAME bytes. Tokens must be computed on `decode_stored_image(encode_stored_image(x))`,
   never on the pre-JPEG array `x`: JPEG is lossy, so the array the loader sees differs from `x`.
2. Both sides use the same render function, version (`RENDER_VERSION`) and Pillow/libjpeg build (recorded in
   the manifest via `render_info`).

View parameters are in the coordinates of the stored image (short side `STORED_SHORT_SIDE`), so they never
depend on the original file. The sampler follows torchvision's `RandomResizedCrop.get_params` (10 tries,
then a centre crop clamped to the ratio range); the draw order is part of the contract for reproducibility.

Normalization: BEiT-3's vision-language fine-tuning uses mean = std = 0.5 (microsoft/unilm `beit3/datasets.py`,
inception constants), i.e. `x / 255 * 2 - 1`, which is exactly the scaling VQ-KD applies to its [0, 1] input.
One rendered uint8 array therefore serves both the model and the tokenizer.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import PIL
from PIL import Image, features

if TYPE_CHECKING:  # torch is imported where a tensor is made: CPU-stage workers never load it
    import torch

__all__ = [
    "JPEG_QUALITY",
    "RENDER_VERSION",
    "STORED_SHORT_SIDE",
    "ViewParams",
    "canonical_view",
    "decode_stored_image",
    "encode_stored_image",
    "render_info",
    "decode_stored_pil",
    "render_view",
    "render_views",
    "resize_short_side",
    "resize_short_side_image",
    "sample_views",
    "to_model_input",
    "to_tokenizer_input",
]

# Bump whenever `render_view` (crop, interpolation, flip order) changes: stored tokens become invalid.
RENDER_VERSION = "crop-bicubic-flip/1"
STORED_SHORT_SIDE = 256
JPEG_QUALITY = 95
# 4:4:4 (no chroma subsampling) avoids chroma upsampling at decode time, the step where libjpeg
# implementations (IJG 7+ vs libjpeg-turbo) are known to disagree; only the integer IDCT remains.
_JPEG_SUBSAMPLING = 0
_NUM_TRIES = 10


@dataclass(frozen=True)
class ViewParams:
    """One crop box plus flip, in pixel coordinates of the stored image."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def check_inside(self, height: int, width: int) -> None:
        """Raise `ValueError` unless the box is non-empty and inside a `height` x `width` image."""
        if self.height <= 0 or self.width <= 0 or self.top < 0 or self.left < 0:
            raise ValueError(f"empty or negative view {self}")
        if self.top + self.height > height or self.left + self.width > width:
            raise ValueError(f"view {self} exceeds the {height}x{width} image")


def canonical_view(height: int, width: int) -> ViewParams:
    """The centred square crop of side `min(height, width)`, not flipped (spec option A's view)."""
    side = min(height, width)
    return ViewParams(top=(height - side) // 2, left=(width - side) // 2, height=side, width=side, flip=False)


def random_resized_box(
    height: int, width: int, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params` on a numpy Generator; returns (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_NUM_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, clamped to the allowed aspect range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_views(
    height: int,
    width: int,
    num_views: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    allow_flip: bool = True,
    canonical_first: bool = True,
) -> list[ViewParams]:
    """Draw `num_views` crop boxes for a stored image of size `height` x `width`.

    Args:
        height: Stored image height in pixels.
        width: Stored image width in pixels.
        num_views: Number of views K (the spec recommends 8-16).
        rng: Source of randomness; the same generator state gives the same views.
        scale: Range of the crop area as a fraction of the image area (BEiT v2 uses (0.2, 1)).
        ratio: Range of the crop aspect ratio w/h, sampled log-uniformly.
        allow_flip: Draw a horizontal flip with probability 0.5. Turn off for pairs whose captions say
            "left"/"right".
        canonical_first: Make view 0 the centred square crop, unflipped, so one deterministic view exists.

    Returns:
        The views, each inside the image.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"bad scale {scale} or ratio {ratio}")
    views = [canonical_view(height, width)] if canonical_first else []
    while len(views) < num_views:
        top, left, h, w = random_resized_box(height, width, rng, scale, ratio)
        # The coin is tossed even when flips are off, so toggling `allow_flip` never changes the boxes.
        flip = bool(rng.random() < 0.5) and allow_flip
        views.append(ViewParams(top=top, left=left, height=h, width=w, flip=flip))
    return views


def _check_rgb_array(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")


def _as_rgb_image(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        return image
    _check_rgb_array(image)
    return Image.fromarray(image)


def _render_into(image: Image.Image, view: ViewParams, out_size: int, out: np.ndarray) -> None:
    """Writes one view of `image` into `out` (uint8 [out_size, out_size, 3])."""
    view.check_inside(image.height, image.width)
    box = (view.left, view.top, view.left + view.width, view.top + view.height)
    resized = np.asarray(image.crop(box).resize((out_size, out_size), Image.Resampling.BICUBIC), dtype=np.uint8)
    out[...] = resized[:, ::-1] if view.flip else resized


def render_view(image: np.ndarray | Image.Image, view: ViewParams, out_size: int) -> np.ndarray:
    """Crop, resize (bicubic) to `out_size` x `out_size`, then mirror if `view.flip`.

    Crop-then-resize matches torchvision `resized_crop` on PIL images; Pillow's `resize(box=...)` is avoided
    because its filter reads pixels outside the box.

    Args:
        image: Stored image, uint8 [H, W, 3] as returned by `decode_stored_image`, or the RGB image of
            `decode_stored_pil` (same pixels, no array copy).
        view: Crop and flip parameters in the image's coordinates.
        out_size: Side of the square output (224 for patch 16 and a 14x14 token grid).

    Returns:
        uint8 [out_size, out_size, 3].
    """
    out = np.empty((out_size, out_size, 3), dtype=np.uint8)
    _render_into(_as_rgb_image(image), view, out_size, out)
    return out


def render_views(image: np.ndarray | Image.Image, views: list[ViewParams], out_size: int) -> np.ndarray:
    """All views of one image, uint8 [K, out_size, out_size, 3]; view k equals `render_view(image, views[k])`."""
    pil = _as_rgb_image(image)
    out = np.empty((len(views), out_size, out_size, 3), dtype=np.uint8)
    for k, view in enumerate(views):
        _render_into(pil, view, out_size, out[k])
    return out


def render_info(out_size: int) -> dict[str, str | int]:
    """What a manifest must record for stored tokens to stay valid (compare on load)."""
    return {
        "render_version": RENDER_VERSION,
        "interpolation": "bicubic",
        "out_size": out_size,
        "pillow": PIL.__version__,
        "libjpeg_turbo": str(features.version_feature("libjpeg_turbo")),
        "jpeg_quality": JPEG_QUALITY,
        "jpeg_subsampling": "4:4:4",
    }


def _as_uint8_batch(rendered: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    x = torch.as_tensor(rendered)
    if x.dtype != torch.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, S, S, 3] or [S, S, 3], got {x.dtype} {tuple(x.shape)}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    return x.permute(0, 3, 1, 2)  # [B, 3, S, S]


def to_tokenizer_input(rendered: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 [B, S, S, 3] or [S, S, 3] -> [B, 3, S, S] in [0, 1], the VQ-KD input (it rescales itself).

    `dtype` defaults to float32."""
    import torch

    return _as_uint8_batch(rendered).to(dtype or torch.float32) / 255


def to_model_input(rendered: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 [B, S, S, 3] or [S, S, 3] -> [B, 3, S, S] in [-1, 1] (mean = std = 0.5).

    Computed as `to_tokenizer_input(x) * 2 - 1`, the same float operations VQ-KD applies internally, so the
    model input equals the tokenizer's normalized input bit for bit.
    """
    return to_tokenizer_input(rendered, dtype) * 2 - 1


def resize_short_side(image: np.ndarray, short_side: int = STORED_SHORT_SIDE) -> np.ndarray:
    """Resize (bicubic) so the shorter side equals `short_side`, keeping the aspect ratio.

    Smaller images are upscaled too, so every stored image has the same short side and view parameters mean
    the same relative scale across the data set.
    """
    _check_rgb_array(image)
    if min(image.shape[:2]) == short_side:
        return image
    return np.asarray(resize_short_side_image(Image.fromarray(image), short_side), dtype=np.uint8)


def resize_short_side_image(image: Image.Image, short_side: int = STORED_SHORT_SIDE) -> Image.Image:
    """`resize_short_side` on a PIL image (same pixels); returns `image` itself when no resize is needed."""
    width, height = image.size
    if min(height, width) == short_side:
        return image
    factor = short_side / min(height, width)
    new_h = short_side if height <= width else max(short_side, int(round(height * factor)))
    new_w = short_side if width < height else max(short_side, int(round(width * factor)))
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def encode_stored_image(image: np.ndarray | Image.Image) -> bytes:
    """Encode uint8 [H, W, 3] (or an RGB image) as the stored JPEG (quality 95, 4:4:4, baseline, no metadata).

    The settings are fixed so the same pixels always give the same bytes with one libjpeg build. An empty
    comment keeps a comment in a PIL image's `info` (copied from its source file) out of the bytes.
    """
    buffer = io.BytesIO()
    _as_rgb_image(image).save(
        buffer,
        format="JPEG",
        quality=JPEG_QUALITY,
        subsampling=_JPEG_SUBSAMPLING,
        optimize=False,
        progressive=False,
        comment=b"",
    )
    return buffer.getvalue()


def decode_stored_pil(data: bytes) -> Image.Image:
    """Decode stored JPEG bytes to a loaded RGB image (the pixels of `decode_stored_image`, no array copy)."""
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")


def decode_stored_image(data: bytes) -> np.ndarray:
    """Decode stored JPEG bytes to uint8 [H, W, 3]; the only way either side may obtain render input."""
    return np.asarray(decode_stored_pil(data), dtype=np.uint8)
