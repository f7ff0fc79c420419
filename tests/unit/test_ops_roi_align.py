"""RoIAlign against a brute-force per-sample loop written from torchvision's CPU kernel description."""

import math

import pytest
import torch

from evaluation.ops import roi_align
from evaluation.ops.roi_align import _grid_groups, level_of_boxes


def _bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One bilinear sample of [C, H, W] as the reference kernel computes it."""
    height, width = fmap.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(fmap.shape[0], dtype=fmap.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def _reference(features, rois, ph, pw, scale, sampling_ratio, aligned):
    out = torch.zeros(len(rois), features.shape[1], ph, pw, dtype=features.dtype)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(gh):
                    y = sy + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + j * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(features[int(b)], y, x)
                out[k, :, i, j] = acc / count
    return out


def _random_rois(generator, num, batch, height, width, scale):
    """Boxes inside, across and outside the image border, tiny and empty ones included."""
    img_h, img_w = height / scale, width / scale
    x1 = torch.rand(num, generator=generator, dtype=torch.float64) * img_w * 1.4 - 0.2 * img_w
    y1 = torch.rand(num, generator=generator, dtype=torch.float64) * img_h * 1.4 - 0.2 * img_h
    w = torch.rand(num, generator=generator, dtype=torch.float64) * img_w * 0.8
    h = torch.rand(num, generator=generator, dtype=torch.float64) * img_h * 0.8
    w[:3], h[:3] = torch.tensor([0.0, 0.3, 2.0]), torch.tensor([0.0, 0.5, 0.0])  # empty and sub-pixel boxes
    b = torch.randint(0, batch, (num,), generator=generator).double()
    edge = torch.tensor([[0, 0, 0, img_w, img_h], [batch - 1, img_w - 1, img_h - 1, img_w + 3, img_h + 3]])
    return torch.cat([torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1), edge.double()])


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_align_matches_bruteforce(sampling_ratio, aligned, scale):
    generator = torch.Generator().manual_seed(sampling_ratio * 10 + int(aligned) + int(scale * 4))
    features = torch.randn(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    rois = _random_rois(generator, 14, 2, 9, 11, scale)
    got = roi_align(features, rois, (3, 4), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    want = _reference(features, rois, 3, 4, scale, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_roi_align_chunks_and_gradient():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2, 8, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = _random_rois(generator, 9, 1, 8, 8, 1.0)
    whole = roi_align(features, rois, 2, sampling_ratio=0)
    torch.testing.assert_close(roi_align(features, rois, 2, sampling_ratio=0, chunk=4), whole)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois[3:6], 2, sampling_ratio=2), (features,))


def test_roi_align_boxes_of_very_different_grids():
    # Adaptive grids from 1 x 1 to 8 x 3 per bin: the boxes fall into several groups and each must still sample
    # exactly its own grid, in forward and backward.
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 40, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [
            [0, 1.0, 1.0, 3.0, 3.0],
            [1, 0.5, 0.0, 11.0, 39.0],  # tall: 8 samples per bin down, 3 across
            [0, 2.0, 5.0, 4.5, 21.0],
            [1, 3.0, 3.0, 4.0, 4.0],
            [0, 0.0, 0.0, 11.5, 9.0],
        ],
        dtype=torch.float64,
    )
    assert len(_grid_groups(rois, 5, 4, 1.0, 0, True)) >= 3
    got = roi_align(features, rois, (5, 4), sampling_ratio=0)
    torch.testing.assert_close(got, _reference(features.detach(), rois, 5, 4, 1.0, 0, True), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (5, 4), sampling_ratio=0), (features,), fast_mode=True)


def test_roi_align_empty_and_bad_rois():
    features = torch.randn(1, 4, 5, 5)
    assert roi_align(features, torch.zeros(0, 5), 7).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(features, torch.zeros(3, 4), 7)


def test_level_of_boxes_follows_the_fpn_rule():
    # sqrt(area) 224 -> level 4; 112 -> 3; 448 -> 5; 10 -> clamped to 2; 2000 -> clamped to 5; the floor of
    # 4 + log2(side / 224): 200 -> 3.84 -> 3 and 400 -> 4.84 -> 4 (rounding would give 4 and 5).
    sides = torch.tensor([224.0, 112.0, 448.0, 10.0, 2000.0, 200.0, 400.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=1)
    assert level_of_boxes(boxes, 2, 5).tolist() == [4, 3, 5, 2, 5, 3, 4]


def test_one_box_per_map_path_matches_bruteforce():
    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(4, 1, 12, 10, generator=generator, dtype=torch.float64)
    rois = _random_rois(generator, 4, 4, 12, 10, 1.0)[:4]
    rois[:, 0] = torch.arange(4, dtype=torch.float64)  # box i crops map i
    got = roi_align(masks, rois, 5, sampling_ratio=0)
    torch.testing.assert_close(got, _reference(masks, rois, 5, 5, 1.0, 0, True), rtol=1e-10, atol=1e-10)
