"""The ADE20K training and test pipelines of the BEiT v2 reference (mmseg 0.11 transforms, sized by config).

Train: ratio-range resize (keep aspect; `img_scale` (2048, 512) times a ratio drawn from 0.5-2.0; image
bilinear, label nearest) -> random crop (512 x 512; up to 10 draws rejecting crops where one class covers
more than 75% of the labelled pixels) -> horizontal flip (p 0.5) -> photometric distortion (brightness +-32,
contrast 0.5-1.5, saturation 0.5-1.5, hue +-18 on OpenCV's 0-180 scale; each with p 0.5, contrast before or
after the colour steps) -> normalise (mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375; RGB) -> pad to the
crop size (image 0, label 255). Test: resize keeping the aspect so the long side fits 2048 and the short side
512 (`rescale_size`). Scale-dependent constants are parameters with the reference defaults.

Colour steps go through PIL's HSV (hue 0-255) instead of OpenCV's (0-180), so the hue shift is rescaled; pixel
values may differ from mmcv by rounding. Random draws come from a numpy Generator the caller seeds (the
dataset seeds it from torch's generator, which the fine-tuning loop reseeds per epoch and rank).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
IMG_SCALE = (2048, 512)
RATIO_RANGE = (0.5, 2.0)
CROP_SIZE = 512
CAT_MAX_RATIO = 0.75
CROP_TRIES = 10
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # on OpenCV's 0-180 hue scale


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K raw labels -> training ids: 0 ("other") -> 255 (ignored), k -> k - 1; 255 stays ignored."""
    out = label.astype(np.int16) - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out.astype(np.uint8)


def rescale_size(height: int, width: int, scale: tuple[int, int] = IMG_SCALE) -> tuple[int, int]:
    """(new_h, new_w) keeping the aspect: factor = min(long_max / long side, short_max / short side).

    mmcv `rescale_size`: sizes are rounded half up (int(x * factor + 0.5)).
    """
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
    """Image bilinear, label nearest, to (h, w)."""
    height, width = size
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
    return image, label


def random_rescale(image, label, rng: np.random.Generator, scale=IMG_SCALE, ratio_range=RATIO_RANGE):
    """mmseg `Resize(img_scale, ratio_range, keep_ratio=True)`: scale x a uniform ratio, then `rescale_size`."""
    ratio = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return resize_pair(image, label, rescale_size(image.shape[0], image.shape[1], target))


def _crop_box(height: int, width: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    top = int(rng.integers(0, max(height - crop, 0) + 1))
    left = int(rng.integers(0, max(width - crop, 0) + 1))
    return top, min(top + crop, height), left, min(left + crop, width)


def random_crop(image, label, rng: np.random.Generator, crop=CROP_SIZE, cat_max_ratio=CAT_MAX_RATIO, tries=CROP_TRIES):
    """mmseg `RandomCrop(crop, cat_max_ratio)`: redraw (up to `tries` times) while one class covers too much.

    A crop is kept when its labelled pixels hold more than one class and the largest covers less than
    `cat_max_ratio` of them; after `tries` rejections the next draw is used as it is (as mmseg does).
    """
    box = _crop_box(image.shape[0], image.shape[1], crop, rng)
    if cat_max_ratio < 1:
        for _ in range(tries):
            top, bottom, left, right = box
            classes, counts = np.unique(label[top:bottom, left:right], return_counts=True)
            counts = counts[classes != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(image.shape[0], image.shape[1], crop, rng)
    top, bottom, left, right = box
    return image[top:bottom, left:right], label[top:bottom, left:right]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg `PhotoMetricDistortion` on uint8 RGB [H, W, 3]."""
    x = image.astype(np.float32)
    if rng.integers(2):
        x = np.clip(x + rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA), 0, 255)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        x = np.clip(x * rng.uniform(*CONTRAST_RANGE), 0, 255)
    saturate, saturation = rng.integers(2), rng.uniform(*SATURATION_RANGE)
    shift_hue, hue = rng.integers(2), int(rng.integers(-HUE_DELTA, HUE_DELTA))
    if saturate or shift_hue:
        hsv = np.asarray(Image.fromarray(x.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturate:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if shift_hue:
            hsv[..., 0] = (hsv[..., 0] + hue * 256 / 180) % 256
        bands = [Image.fromarray(np.ascontiguousarray(hsv[..., i]).astype(np.uint8)) for i in range(3)]
        x = np.asarray(Image.merge("HSV", bands).convert("RGB")).astype(np.float32)
    if not contrast_first and rng.integers(2):
        x = np.clip(x * rng.uniform(*CONTRAST_RANGE), 0, 255)
    return x.astype(np.uint8)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W] with the reference mean and std."""
    return ((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def pad_pair(image_3hw: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the bottom and right to size x size: image with 0, label with 255."""
    pad_h, pad_w = max(size - image_3hw.shape[1], 0), max(size - image_3hw.shape[2], 0)
    image_3hw = np.pad(image_3hw, ((0, 0), (0, pad_h), (0, pad_w)))
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image_3hw, label


def train_pipeline(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    img_scale: tuple[int, int] = IMG_SCALE,
    ratio_range: tuple[float, float] = RATIO_RANGE,
    crop_size: int = CROP_SIZE,
    cat_max_ratio: float = CAT_MAX_RATIO,
    photometric: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [H, W, 3] + reduced label [H, W] -> float32 [3, S, S] + uint8 [S, S] (S = crop_size)."""
    image, label = random_rescale(image, label, rng, img_scale, ratio_range)
    image, label = random_crop(image, label, rng, crop_size, cat_max_ratio)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    return pad_pair(normalize(image), np.ascontiguousarray(label), crop_size)
