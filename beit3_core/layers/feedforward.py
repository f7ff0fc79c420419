"""The FFN expert: fc1 -> GELU -> (sub-LN) -> fc2."""

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """One FFN expert. With Magneto sub-LN an extra LayerNorm (`ffn_layernorm`, width ffn_dim) sits before fc2."""

    def __init__(self, embed_dim: int, ffn_dim: int, subln: bool, eps: float, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps) if subln else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU; PyTorch evaluates it in fp32 internally for bf16/fp16 inputs, as the reference does
        # by casting explicitly.
        x = F.gelu(self.fc1(x))
        if self.ffn_layernorm is not None:
            x = self.ffn_layernorm(x)
        return self.dropout(self.fc2(x))
