"""RoIAlign with torchvision's semantics (`torchvision.ops.roi_align`, Mask R-CNN arXiv 1703.06870).

Checked against torchvision's CPU kernel (`csrc/ops/cpu/roi_align_kernel.cpp`) and detectron2's `ROIAlign`
(`aligned=True`, the ViTDet default): a box is shifted by -0.5 pixel after scaling so that its corners fall on
pixel corners, each output bin averages `sampling_ratio` x `sampling_ratio` bilinear samples, or
ceil(box size / output size) per side when `sampling_ratio <= 0` (adaptive), and a sample more than one pixel
outside the map is zero while one within a pixel of the border is clamped to it.

The adaptive grid differs per box; here every box samples the largest grid and the samples a box does not own
get weight zero, so the whole op is four gathers and a weighted sum (differentiable in the features).
"""

from __future__ import annotations

import torch


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    chunk: int = 256,
) -> torch.Tensor:
    """Bilinear RoI features.

    Args:
        features: [N, C, H, W] feature maps.
        rois: [K, 5] rows (batch index, x1, y1, x2, y2) in input-image coordinates.
        output_size: (PH, PW) or one int for both.
        spatial_scale: Feature-map size / input size (1 / stride).
        sampling_ratio: Samples per bin side; <= 0 = adaptive (ceil(roi side / output side)).
        aligned: Shift by -0.5 pixel (torchvision `aligned=True`); False = the original Mask R-CNN op, which also
            makes every box at least one pixel wide.
        chunk: Boxes processed at once (bounds the gathered memory).

    Returns:
        [K, C, PH, PW].
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    num_rois, channels = rois.shape[0], features.shape[1]
    if num_rois == 0:
        return features.new_zeros(0, channels, ph, pw)
    parts = [
        _roi_align_chunk(features, rois[i : i + chunk], ph, pw, spatial_scale, sampling_ratio, aligned)
        for i in range(0, num_rois, chunk)
    ]
    return torch.cat(parts)


def _roi_align_chunk(
    features: torch.Tensor, rois: torch.Tensor, ph: int, pw: int, scale: float, sampling_ratio: int, aligned: bool
) -> torch.Tensor:
    n, c, height, width = features.shape
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    start_x, start_y = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset  # [K]
    roi_w, roi_h = rois[:, 3] * scale - offset - start_x, rois[:, 4] * scale - offset - start_y
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw  # [K]
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, float(sampling_ratio))
        grid_w = torch.full_like(roi_w, float(sampling_ratio))
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph), torch.ceil(roi_w / pw)
    max_gh = max(1, int(grid_h.max().item())) if sampling_ratio <= 0 else sampling_ratio
    max_gw = max(1, int(grid_w.max().item())) if sampling_ratio <= 0 else sampling_ratio

    y_KPG, y_valid = _sample_coords(start_y, bin_h, grid_h, ph, max_gh)  # [K, PH, GH]
    x_KPG, x_valid = _sample_coords(start_x, bin_w, grid_w, pw, max_gw)  # [K, PW, GW]
    count = (grid_h * grid_w).clamp(min=1.0)  # [K]

    y = y_KPG[:, :, :, None, None]  # [K, PH, GH, 1, 1]
    x = x_KPG[:, None, None, :, :]  # [K, 1, 1, PW, GW]
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    weight = inside & y_valid[:, :, :, None, None] & x_valid[:, None, None, :, :]  # [K, PH, GH, PW, GW]
    weight = weight.to(features.dtype) / count[:, None, None, None, None]

    y_low, y_high, ly = _corners(y_KPG.clamp(min=0.0), height)  # [K, PH, GH]
    x_low, x_high, lx = _corners(x_KPG.clamp(min=0.0), width)  # [K, PW, GW]
    flat = features.permute(0, 2, 3, 1).reshape(n * height * width, c)  # [N*H*W, C]
    base = rois[:, 0].long()[:, None, None, None, None] * (height * width)
    out = 0
    for yi, wy in ((y_low, 1 - ly), (y_high, ly)):
        for xi, wx in ((x_low, 1 - lx), (x_high, lx)):
            index = base + yi[:, :, :, None, None] * width + xi[:, None, None, :, :]  # [K, PH, GH, PW, GW]
            w = weight * wy[:, :, :, None, None] * wx[:, None, None, :, :]
            values = flat[index.reshape(-1)].reshape(*index.shape, c)  # [K, PH, GH, PW, GW, C]
            out = out + (values * w[..., None]).sum(dim=(2, 4))  # [K, PH, PW, C]
    return out.permute(0, 3, 1, 2).contiguous()  # [K, C, PH, PW]


def _sample_coords(
    start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int, max_grid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample positions [K, bins, max_grid] along one axis and whether each is within the box's own grid."""
    p = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    g = torch.arange(max_grid, dtype=start.dtype, device=start.device)[None, None, :]
    grid_ = grid.clamp(min=1.0)[:, None, None]
    coords = start[:, None, None] + p * bin_size[:, None, None] + (g + 0.5) * bin_size[:, None, None] / grid_
    valid = g < grid[:, None, None]
    return coords, valid.expand_as(coords)


def _corners(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper neighbour indices and the fraction toward the upper one (clamped at the last pixel)."""
    low = coord.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, frac


def level_of_boxes(boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: float = 224.0) -> torch.Tensor:
    """FPN level of each box (Feature Pyramid Networks, eq. 1; detectron2 `assign_boxes_to_levels`).

    level = floor(4 + log2(sqrt(area) / canonical_size)), clamped to [min_level, max_level]; `boxes` [K, 4] xyxy.
    """
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(4 + torch.log2(sizes / canonical_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).long()


__all__ = ["level_of_boxes", "roi_align"]
