"""Dense features of the BEiT-3 vision path: hidden states of chosen blocks as stride-16 maps at any input size.

BEiT-3 (arXiv 2208.10442) released no dense-task code; the recipe follows BEiT v2's semantic segmentation
backbone (microsoft/unilm `beit2/semantic_segmentation`, features after blocks [3, 5, 7, 11] for base and
[7, 11, 15, 23] for large, no final norm) and detectron2 ViTDet's `get_abs_pos` (absolute positions resized
bicubically to the input's patch grid on every call) and, as an option, ViTDet's window attention with a few
global blocks (`beit3_core.layers.window`).

The vision position table keeps the shape it was pretrained with (3 + g^2 rows for a g x g grid), so released
checkpoints and our own load strictly; only the forward resizes the g x g part to the input's h x w grid.

Legend: B batch, D embed dim, h x w patch grid of the input (H / patch, W / patch), L encoder layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from beit3_core.layers.embedding import POSITION_OFFSET
from beit3_core.layers.multiway import VISION
from beit3_core.layers.window import WindowPartition
from beit3_core.model import BEiT3

# Fractions of the depth whose block outputs feed the pyramid: base [3, 5, 7, 11] of 12 layers = blocks ending
# at depth 1/3, 1/2, 2/3 and 1; large [7, 11, 15, 23] of 24 is the same rule.
_DEPTH_FRACTIONS = (1 / 3, 1 / 2, 2 / 3, 1.0)


def default_out_indices(num_layers: int) -> tuple[int, ...]:
    """Block indices (0-based) of the BEiT v2 reference: [3, 5, 7, 11] for 12 layers, [7, 11, 15, 23] for 24.

    Other depths scale the same fractions (tiny, 4 layers: [0, 1, 2, 3]; 2 layers: [0, 0, 0, 1]).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return tuple(max(0, round(num_layers * f) - 1) for f in _DEPTH_FRACTIONS)


def vision_positions(beit3: BEiT3, grid_h: int, grid_w: int) -> torch.Tensor:
    """Position embeddings [1, 1 + h*w, D] of the CLS token and an h x w patch grid.

    The stored g x g grid is resized bicubically (align_corners=False), as the checkpoint loader and ViTDet do;
    at the stored size the rows are returned unchanged.
    """
    table = beit3.encoder.embed_positions.A.weight  # [3 + g*g, D]
    g = beit3.config.grid_size
    cls_row = table[POSITION_OFFSET : POSITION_OFFSET + 1]  # [1, D]
    grid = table[POSITION_OFFSET + 1 : POSITION_OFFSET + 1 + g * g]  # [g*g, D]
    if (grid_h, grid_w) != (g, g):
        dim = grid.shape[-1]
        grid_1Dgg = grid.float().reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid_1Dhw = F.interpolate(grid_1Dgg, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        grid = grid_1Dhw.permute(0, 2, 3, 1).reshape(grid_h * grid_w, dim).to(table.dtype)
    return torch.cat([cls_row, grid], dim=0).unsqueeze(0)


def block_feature_maps(
    beit3: BEiT3,
    image: torch.Tensor,
    out_indices: Sequence[int],
    window_size: int = 0,
    global_blocks: Sequence[int] = (),
) -> list[torch.Tensor]:
    """Outputs of the blocks `out_indices` as maps [B, D, H/16, W/16] (patch tokens only).

    Runs the vision expert only, like `BEiT3.forward(image=...)` but at any H x W divisible by the patch size,
    stopping after the deepest requested block.

    Args:
        beit3: The backbone (built with `normalize_output=False`; the final norm is not used here).
        image: [B, 3, H, W], H and W multiples of the patch size (pad first; `pad_to_multiple`).
        out_indices: 0-based block indices, non-decreasing (a block may feed several levels).
        window_size: 0: global attention over CLS + patches in every block (CLS dropped from the maps). > 0:
            ViTDet's window attention in the blocks not in `global_blocks`, and no CLS token at all.
        global_blocks: Blocks that attend globally when window_size > 0.
    """
    patch = beit3.config.patch_size
    if image.ndim != 4 or image.shape[-2] % patch or image.shape[-1] % patch:
        raise ValueError(f"image must be [B, C, H, W] with H, W multiples of {patch}, got {tuple(image.shape)}")
    num_layers = len(beit3.encoder.layers)
    if list(out_indices) != sorted(out_indices) or not 0 <= out_indices[0] <= out_indices[-1] < num_layers:
        raise ValueError(f"out_indices must not decrease and lie in [0, {num_layers}), got {list(out_indices)}")
    grid_h, grid_w = image.shape[-2] // patch, image.shape[-1] // patch
    x_BND = beit3.vision_embed(image)  # [B, 1 + h*w, D]
    x_BND = beit3.dropout(x_BND + vision_positions(beit3, grid_h, grid_w))
    windows = None
    if window_size:
        x_BND = x_BND[:, 1:]  # [B, h*w, D]: ViTDet keeps no class token
        windows = WindowPartition(grid_h, grid_w, window_size, x_BND.device)
    first_patch = x_BND.shape[1] - grid_h * grid_w
    segments, experts = [x_BND], [VISION]
    maps = {}
    for index, layer in enumerate(beit3.encoder.layers[: out_indices[-1] + 1]):
        block_windows = None if index in global_blocks else windows
        if beit3.grad_checkpointing and beit3.training:
            segments = checkpoint(layer, segments, experts, experts, None, block_windows, use_reentrant=False)
        else:
            segments = layer(segments, experts, experts, None, block_windows)
        if index in out_indices:
            patches_BND = segments[0][:, first_patch:]
            maps[index] = patches_BND.transpose(1, 2).reshape(x_BND.shape[0], -1, grid_h, grid_w)
    # Shallow models may read one block for several levels.
    return [maps[index] for index in out_indices]


def pad_to_multiple(image: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pads [..., H, W] at the bottom and right so H and W are multiples of `multiple`."""
    pad_h, pad_w = -image.shape[-2] % multiple, -image.shape[-1] % multiple
    return F.pad(image, (0, pad_w, 0, pad_h), value=value) if pad_h or pad_w else image
