"""Stochastic depth shared across the segments of one sequence."""

import torch
from torch import nn


class DropPath(nn.Module):
    """Drops a whole residual branch per sample (timm semantics: survivors scaled by 1/keep_prob).

    A sequence is processed as several modality segments; the same per-sample draw must apply to all of them,
    so the module hands out the scale tensor and the caller multiplies each segment.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def sample_scale(self, batch_size: int, like: torch.Tensor) -> torch.Tensor | None:
        """`[B, 1, 1]` scale (0 or 1/keep_prob), or None when nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep_prob = 1.0 - self.drop_prob
        keep = torch.empty(batch_size, 1, 1, dtype=like.dtype, device=like.device).bernoulli_(keep_prob)
        return keep.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
