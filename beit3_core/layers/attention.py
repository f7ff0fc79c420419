"""Joint self-attention over modality segments, with per-expert (or shared) projections.

Legend: B batch, N total sequence length (all segments), n length of one segment, D embed dim, H heads,
Dh head dim.
"""

import torch
import torch.nn.functional as F
from torch import nn

from beit3_core.layers.multiway import maybe_multiway, route
from beit3_core.layers.window import WindowPartition


class MultiwaySelfAttention(nn.Module):
    """q/k/v/out projections and the sub-LN before out_proj, per expert ("decoupled") or shared.

    Every token's q, k and v come from its own segment's expert; the softmax attention then runs over the
    concatenation of all segments, which is the only place modalities meet. Parameter names follow the
    released checkpoints (`q_proj.A.weight`, `inner_attn_ln.B.bias`, ...).
    """

    def __init__(self, embed_dim: int, num_heads: int, multiway: bool, subln: bool, eps: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = maybe_multiway(lambda: nn.Linear(embed_dim, embed_dim), multiway)
        self.k_proj = maybe_multiway(lambda: nn.Linear(embed_dim, embed_dim), multiway)
        self.v_proj = maybe_multiway(lambda: nn.Linear(embed_dim, embed_dim), multiway)
        self.out_proj = maybe_multiway(lambda: nn.Linear(embed_dim, embed_dim), multiway)
        self.inner_attn_ln = maybe_multiway(lambda: nn.LayerNorm(embed_dim, eps=eps), multiway) if subln else None
        self.dropout = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        # One GEMM for q, k and v: [B, n, D] -> [B, n, 3D]. The weights stay three modules so the checkpoint
        # layout is unchanged; concatenating them costs 3*D*D, tiny next to the B*n*D*3D product.
        q, k, v = route(self.q_proj, expert), route(self.k_proj, expert), route(self.v_proj, expert)
        weight = torch.cat([q.weight, k.weight, v.weight])
        bias = torch.cat([q.bias, k.bias, v.bias])
        return F.linear(x, weight, bias)

    def forward(
        self,
        segments: list[torch.Tensor],
        experts: list[str],
        attn_mask: torch.Tensor | None,
        windows: WindowPartition | None = None,
    ) -> list[torch.Tensor]:
        """Attend jointly over `segments` ([B, n_i, D] each).

        Args:
            segments: normalized inputs, one tensor per contiguous modality segment.
            experts: expert letter of each segment.
            attn_mask: bool, True = may attend; broadcastable to [B, H, N, N], or None.
            windows: attend within the windows of a patch grid only (one segment of h*w patch tokens);
                `attn_mask` is then replaced by the windows' padding mask. The projections run per token,
                so the padding costs only inside the attention product.

        Returns:
            One [B, n_i, D] output per segment.
        """
        qkv = [self._qkv(x, e) for x, e in zip(segments, experts, strict=True)]
        qkv = torch.cat(qkv, dim=1) if len(qkv) > 1 else qkv[0]  # [B, N, 3D]
        if windows is not None:
            if len(segments) != 1:
                raise ValueError("window attention runs on one patch-grid segment")
            attn_mask = windows.attention_mask(qkv.shape[0])
            qkv = windows.split(qkv)  # [K, s*s, 3D]
        batch_size, seq_len, _ = qkv.shape
        # [B, N, 3D] -> [3, B, H, N, Dh]; heads outer within D ("(h d)"), as in the released weights.
        qkv = qkv.view(batch_size, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # [B, H, N, Dh]
        out = out.transpose(1, 2).reshape(batch_size, seq_len, self.num_heads * self.head_dim)  # [B, N, D]
        if windows is not None:
            out = windows.merge(out)  # [B, h*w, D]

        outputs = []
        for part, expert in zip(out.split([x.shape[1] for x in segments], dim=1), experts, strict=True):
            if self.inner_attn_ln is not None:
                part = route(self.inner_attn_ln, expert)(part)
            outputs.append(self.dropout(route(self.out_proj, expert)(part)))
        return outputs
