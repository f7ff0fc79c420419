"""Patch embedding with CLS and mask tokens; the two multiway position tables."""

import torch
from torch import nn

from beit3_core.layers.multiway import LANGUAGE, VISION

# Position ids start at 2 in each modality (fairseq's padding offset): vision row 2 is the CLS token, rows
# 3.. the patches; text token j uses row 2 + j, also in image-text pairs (text positions restart).
POSITION_OFFSET = 2


class VisionEmbedding(nn.Module):
    """[B, C, H, W] image -> [B, 1 + P, D] (CLS, patches), with a learned token at masked patches."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, image: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(image).flatten(2).transpose(1, 2)  # [B, D, g, g] -> [B, P, D], row-major patches
        if image_mask is not None:
            # Blend rather than index so that the op order matches the reference under autocast.
            w = image_mask.unsqueeze(-1).type_as(x)  # [B, P, 1]
            x = x * (1 - w) + self.mask_token * w
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)


class MultiwayPositions(nn.Module):
    """Learned absolute positions: table A for the vision segment, B for the language segment."""

    def __init__(self, num_vision_positions: int, num_text_positions: int, embed_dim: int):
        super().__init__()
        self.A = nn.Embedding(num_vision_positions, embed_dim)
        self.B = nn.Embedding(num_text_positions, embed_dim)

    def forward(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        """Add the positions of `expert`'s table to a segment `x` [B, n, D]."""
        if expert not in (VISION, LANGUAGE):
            raise ValueError(f"no position table for expert {expert!r}")
        table = self.get_submodule(expert)
        positions = torch.arange(POSITION_OFFSET, POSITION_OFFSET + x.shape[1], device=x.device)
        return x + table(positions).unsqueeze(0)
