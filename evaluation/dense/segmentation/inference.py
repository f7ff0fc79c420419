"""Sliding-window and multi-scale + flip inference of a segmentation model (mmseg "slide" mode, `aug_test`).

Checked against mmsegmentation 0.11 `EncoderDecoder.slide_inference`, `inference` and `aug_test`: windows of
`crop` pixels every `stride` pixels, grids = max(H - crop + stride - 1, 0) // stride + 1 per axis, each window
clipped to the image and shifted back so it is full-size when the image allows; window logits are resized to
the window input (bilinear), summed into a canvas and divided by the per-pixel window count; the result is
resized to the original image size and turned into class probabilities (softmax). Multi-scale + flip averages
those probabilities over every (ratio, flip) pair. A window smaller than the crop (an image smaller than the
crop on some axis) is padded to the full crop with 0 and the padding is cut away, so the model always sees its
training input size.

Legend: K classes, H x W the (test-resized) image, h0 x w0 the original image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from evaluation.dense.segmentation.transforms import IMG_SCALE, rescale_size

CROP = 512
STRIDE = 341
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

Model = Callable[[torch.Tensor], torch.Tensor]
"""Images [N, 3, crop, crop] -> logits [N, K, h, w] at any stride."""


def window_grid(height: int, width: int, crop: int = CROP, stride: int = STRIDE) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every sliding window, row-major."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(bottom - crop, 0), bottom, max(right - crop, 0), right))
    return boxes


def slide_logits(
    model: Model, image_3HW: torch.Tensor, num_classes: int, crop: int = CROP, stride: int = STRIDE, batch: int = 8
) -> torch.Tensor:
    """Averaged window logits [K, H, W] of one normalised image [3, H, W]."""
    _, height, width = image_3HW.shape
    boxes = window_grid(height, width, crop, stride)
    canvas_KHW = image_3HW.new_zeros(num_classes, height, width)
    count_HW = image_3HW.new_zeros(height, width)
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        windows = [image_3HW[:, top:bottom, left:right] for top, bottom, left, right in chunk]
        padded_N3cc = torch.stack([F.pad(w, (0, crop - w.shape[2], 0, crop - w.shape[1])) for w in windows])
        logits_NKhw = model(padded_N3cc)
        logits_NKcc = F.interpolate(logits_NKhw, size=(crop, crop), mode="bilinear", align_corners=False)
        for (top, bottom, left, right), logits_Kcc in zip(chunk, logits_NKcc, strict=True):
            canvas_KHW[:, top:bottom, left:right] += logits_Kcc[:, : bottom - top, : right - left]
            count_HW[top:bottom, left:right] += 1
    return canvas_KHW / count_HW


def predict_probabilities(
    model: Model,
    image_3hw: torch.Tensor,
    num_classes: int,
    img_scale: tuple[int, int] = IMG_SCALE,
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    crop: int = CROP,
    stride: int = STRIDE,
) -> torch.Tensor:
    """Class probabilities [K, h0, w0] of a normalised image at its original size [3, h0, w0].

    For each ratio the image is resized (bilinear, keeping the aspect) to `rescale_size` of `img_scale` x
    ratio, slid over, resized back and softmaxed; with `flip` the mirrored image is added. The default is the
    single-scale test (ratio 1, no flip); `MS_RATIOS` with flip is the multi-scale test.
    """
    _, orig_h, orig_w = image_3hw.shape
    total_Khw, views = None, 0
    for ratio in ratios:
        target = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
        size = rescale_size(orig_h, orig_w, target)
        scaled_3HW = F.interpolate(image_3hw[None], size=size, mode="bilinear", align_corners=False)[0]
        for mirrored in (False, True) if flip else (False,):
            view = scaled_3HW.flip(-1) if mirrored else scaled_3HW
            logits_KHW = slide_logits(model, view, num_classes, crop, stride)
            logits_KHW = logits_KHW.flip(-1) if mirrored else logits_KHW
            logits_Khw = F.interpolate(logits_KHW[None], size=(orig_h, orig_w), mode="bilinear", align_corners=False)
            probs_Khw = logits_Khw[0].softmax(dim=0)
            total_Khw = probs_Khw if total_Khw is None else total_Khw + probs_Khw
            views += 1
    return total_Khw / views
