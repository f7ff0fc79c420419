"""RoIAlign with torchvision's semantics (`torchvision.ops.roi_align`, Mask R-CNN arXiv 1703.06870).

Checked against torchvision's CPU kernel (`csrc/ops/cpu/roi_align_kernel.cpp`) and detectron2's `ROIAlign`
(`aligned=True`, the ViTDet default): a box is shifted by -0.5 pixel after scaling so that its corners fall on
pixel corners, each output bin averages `sampling_ratio` x `sampling_ratio` bilinear samples, or
ceil(box size / output size) per side when `sampling_ratio <= 0` (adaptive), and a sample more than one pixel
outside the map is zero while one within a pixel of the border is clamped to it.

The adaptive grid differs per box. Boxes are grouped by their grid rounded up to a power of two per side; in a
group every box samples the group's largest grid and the samples a box does not own get weight zero, so a box
draws fewer than 4x its own samples (one group for all boxes let a few long proposals set the grid of
hundreds: at 512 px RoIAlign's sampling took a third of a ViTDet-heads step). Samples are drawn per image and
group with one `grid_sample` call and averaged with separable weights, so forward and backward run in torch's
native kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    order, parts = [], []
    for group in _grid_groups(rois, ph, pw, spatial_scale, sampling_ratio, aligned):
        for i in range(0, len(group), chunk):
            index = group[i : i + chunk]
            order.append(index)
            parts.append(_roi_align_chunk(features, rois[index], ph, pw, spatial_scale, sampling_ratio, aligned))
    order_K = torch.cat(order)
    inverse = torch.empty_like(order_K)
    inverse[order_K] = torch.arange(num_rois, device=order_K.device)
    return torch.cat(parts)[inverse]


def _box_geometry(
    rois: torch.Tensor, scale: float, aligned: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start x, start y, width and height of each box on the feature map, each [K]."""
    offset = 0.5 if aligned else 0.0
    start_x, start_y = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - start_x, rois[:, 4] * scale - offset - start_y
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    return start_x, start_y, roi_w, roi_h


def _grid_groups(
    rois: torch.Tensor, ph: int, pw: int, scale: float, sampling_ratio: int, aligned: bool
) -> list[torch.Tensor]:
    """Box indices grouped by adaptive grid size, each side rounded up to a power of two (one group for a
    fixed `sampling_ratio`)."""
    if sampling_ratio > 0:
        return [torch.arange(len(rois), device=rois.device)]
    _, _, roi_w, roi_h = _box_geometry(rois.to(torch.float64), scale, aligned)
    sides = torch.stack([torch.ceil(roi_h / ph), torch.ceil(roi_w / pw)], dim=1).clamp(min=1.0)
    # Non-finite sides (a nan box) join the group of grid 1; `_roi_align_chunk` handles them as before.
    exponent = torch.nan_to_num(torch.ceil(torch.log2(sides)), nan=0.0, posinf=0.0).long()  # [K, 2]
    key = exponent[:, 0] * 64 + exponent[:, 1]
    return [torch.nonzero(key == k).squeeze(1) for k in torch.unique(key)]


def _roi_align_chunk(
    features: torch.Tensor, rois: torch.Tensor, ph: int, pw: int, scale: float, sampling_ratio: int, aligned: bool
) -> torch.Tensor:
    n, c, height, width = features.shape
    rois = rois.to(features.dtype)
    start_x, start_y, roi_w, roi_h = _box_geometry(rois, scale, aligned)  # [K] each
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
    # A sample more than one pixel outside the map is zero; the rest are clamped to the border pixels.
    # Everything is separable in y and x, so each axis gets one weight: inside * own grid / grid size.
    wy = ((y_KPG >= -1.0) & (y_KPG <= height) & y_valid).to(features.dtype) / grid_h.clamp(min=1.0)[:, None, None]
    wx = ((x_KPG >= -1.0) & (x_KPG <= width) & x_valid).to(features.dtype) / grid_w.clamp(min=1.0)[:, None, None]
    # Clamped to pixel centres, bilinear sampling is grid_sample with align_corners=True (-1 / +1 = first / last
    # centre); its native kernel and backward replace four gathers.
    gy = y_KPG.clamp(0.0, height - 1) / max(height - 1, 1) * 2 - 1
    gx = x_KPG.clamp(0.0, width - 1) / max(width - 1, 1) * 2 - 1
    # Sample grid of every box: [K, PH * GH, PW * GW, 2] as (x, y).
    grid = torch.stack(
        [
            gx.reshape(len(rois), 1, -1).expand(-1, ph * max_gh, -1),
            gy.reshape(len(rois), -1, 1).expand(-1, -1, pw * max_gw),
        ],
        dim=-1,
    )
    image_index = rois[:, 0].long()
    if n == len(rois) and torch.equal(image_index, torch.arange(n, device=image_index.device)):
        # One box per map (e.g. cropping each ground-truth mask by its box): one batched call.
        samples = F.grid_sample(features, grid, mode="bilinear", align_corners=True)  # [K, C, PH*GH, PW*GW]
        samples = samples.view(n, c, ph, max_gh, pw, max_gw)
        return torch.einsum("kcaybx,kay,kbx->kcab", samples, wy, wx)
    out = features.new_zeros(len(rois), c, ph, pw)
    for b in torch.unique(image_index).tolist():
        k = torch.nonzero(image_index == b).squeeze(1)
        # All boxes of image b stacked along the output height of one call.
        samples = F.grid_sample(features[b : b + 1], grid[k].reshape(1, -1, pw * max_gw, 2), align_corners=True)
        samples = samples.view(c, len(k), ph, max_gh, pw, max_gw)
        out[k] = torch.einsum("ckaybx,kay,kbx->kcab", samples, wy[k], wx[k])
    return out


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


def level_of_boxes(boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: float = 224.0) -> torch.Tensor:
    """FPN level of each box (Feature Pyramid Networks, eq. 1; detectron2 `assign_boxes_to_levels`).

    level = floor(4 + log2(sqrt(area) / canonical_size)), clamped to [min_level, max_level]; `boxes` [K, 4] xyxy.
    """
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(4 + torch.log2(sizes / canonical_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).long()


__all__ = ["level_of_boxes", "roi_align"]
