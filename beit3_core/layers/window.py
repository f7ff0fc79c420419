"""Non-overlapping window attention over a patch grid (ViTDet, arXiv 2203.16527, Sec. 3).

A block with window attention attends within w x w windows of the patch grid only; everything per token
(layer norms, FFN, drop path) is unchanged, so released weights load as they are. The grid is padded at the
bottom and right to a multiple of w, as detectron2's `window_partition` does; unlike detectron2, the padding
is added after the q/k/v projections (so it costs only inside the attention product) and masked out as keys, so
a token's output depends on the real tokens of its window only, whatever the padding.

Legend: B batch, D embed dim, h x w the patch grid, s the window side, K = B * windows per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class WindowPartition:
    """Cuts [B, h*w, D] patch tokens (row-major grid) into [K, s*s, D] windows and puts them back."""

    def __init__(self, grid_h: int, grid_w: int, window: int, device: torch.device | None = None):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.grid_h, self.grid_w, self.window = grid_h, grid_w, window
        self.pad_h, self.pad_w = -grid_h % window, -grid_w % window
        self.rows, self.cols = (grid_h + self.pad_h) // window, (grid_w + self.pad_w) // window
        self._key_allowed = None
        if self.pad_h or self.pad_w:
            real_hw = torch.ones(grid_h, grid_w, dtype=torch.bool, device=device)
            real_hw = F.pad(real_hw, (0, self.pad_w, 0, self.pad_h), value=False)
            real_ws = self._cut(real_hw[None, :, :, None])[:, :, 0]  # [windows, s*s]
            self._key_allowed = real_ws[:, None, None, :]  # [windows, 1, 1, s*s]: SDPA's "may attend"

    def split(self, x_BND: torch.Tensor) -> torch.Tensor:
        """[B, h*w, D] -> [K, s*s, D], window-major per image."""
        batch, tokens, dim = x_BND.shape
        if tokens != self.grid_h * self.grid_w:
            raise ValueError(f"expected {self.grid_h} x {self.grid_w} patch tokens, got {tokens}")
        x_BhwD = x_BND.view(batch, self.grid_h, self.grid_w, dim)
        return self._cut(F.pad(x_BhwD, (0, 0, 0, self.pad_w, 0, self.pad_h)))

    def merge(self, windows_KSD: torch.Tensor) -> torch.Tensor:
        """[K, s*s, D] -> [B, h*w, D] (padding dropped)."""
        s, dim = self.window, windows_KSD.shape[-1]
        batch = windows_KSD.shape[0] // (self.rows * self.cols)
        x = windows_KSD.view(batch, self.rows, self.cols, s, s, dim).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, self.rows * s, self.cols * s, dim)[:, : self.grid_h, : self.grid_w]
        return x.reshape(batch, self.grid_h * self.grid_w, dim)

    def attention_mask(self, batch: int) -> torch.Tensor | None:
        """SDPA's bool "may attend" mask [K, 1, 1, s*s] hiding padded keys, or None without padding."""
        if self._key_allowed is None:
            return None
        return self._key_allowed.repeat(batch, 1, 1, 1)

    def _cut(self, x_BHWD: torch.Tensor) -> torch.Tensor:
        batch, dim, s = x_BHWD.shape[0], x_BHWD.shape[-1], self.window
        x = x_BHWD.reshape(batch, self.rows, s, self.cols, s, dim).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(batch * self.rows * self.cols, s * s, dim)
