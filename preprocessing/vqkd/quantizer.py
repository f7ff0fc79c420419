"""Norm-EMA vector quantizer of the BEiT v2 VQ-KD tokenizer (Peng et al., 2022, arXiv:2208.06366).

Behaviour checked against microsoft/unilm `beit2/norm_ema_quantizer.py`: unit-norm codebook, lookup by
nearest unit vector (== largest cosine), straight-through estimator, codebook moved by an EMA on the sphere
instead of a codebook loss, lazy spherical k-means init guarded by `initted`, commitment loss only.

Deviations from upstream, all deliberate:
    - Statistics (`cluster_size`, codebook EMA) change only in training mode; upstream also updates
      `cluster_size` in eval mode, and k-means-inits in eval mode, which would overwrite a loaded codebook.
    - Distances run in fp32 even under autocast; upstream runs them in fp16, which flips near-ties.
    - Under DDP, k-means runs on every rank and rank 0's result is broadcast, so ranks share one codebook.
    - `restart_codes` re-seeds unused codes from current encoder outputs (off unless called).

Buffer names and shapes follow the released checkpoints: `embedding.weight` [K, C], `embedding.cluster_size`
[K], `embedding.embed_avg` [K, C] (kept for the key layout, unused as upstream), `embedding.initted` [1], and
`cluster_size` [K] on the quantizer itself.

Legend: K codes, C code dim, M flattened vectors (batch x positions).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["CodebookEMA", "NormEMAQuantizer", "spherical_kmeans"]

_CHUNK = 8192  # rows per distance block: bounds the [chunk, K] score matrix at 8192 x 8192 floats (256 MiB)


def _ddp_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _nearest(z_MC: torch.Tensor, codes_KC: torch.Tensor) -> torch.Tensor:
    """Index of the largest dot product for unit rows (== smallest Euclidean distance), in row blocks."""
    return torch.cat([(chunk @ codes_KC.t()).argmax(dim=1) for chunk in z_MC.split(_CHUNK)])


@torch.no_grad()
def spherical_kmeans(
    z_MC: torch.Tensor, num_codes: int, num_iters: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Spherical k-means on unit vectors.

    Centres start as `num_codes` random samples (without replacement when there are enough vectors); each
    iteration assigns by largest dot product and moves a centre to the normalized mean of its members. A
    centre with no members keeps its previous value, so it stays a valid unit vector.

    Args:
        z_MC: unit-norm vectors [M, C].
        num_codes: number of centres K.
        num_iters: Lloyd iterations.
        generator: RNG for the initial sample (the global one when None).

    Returns:
        Unit-norm centres [K, C].
    """
    z_MC = z_MC.float()
    num_vectors = z_MC.shape[0]
    if num_vectors >= num_codes:
        pick = torch.randperm(num_vectors, generator=generator, device="cpu")[:num_codes]
    else:
        pick = torch.randint(0, num_vectors, (num_codes,), generator=generator, device="cpu")
    centres_KC = z_MC[pick.to(z_MC.device)].clone()
    for _ in range(num_iters):
        assign_M = _nearest(z_MC, centres_KC)
        sums_KC = torch.zeros_like(centres_KC).index_add_(0, assign_M, z_MC)
        counts_K = torch.bincount(assign_M, minlength=num_codes)
        means_KC = F.normalize(sums_KC, dim=1)
        centres_KC = torch.where((counts_K > 0)[:, None], means_KC, centres_KC)
    return centres_KC


class CodebookEMA(nn.Module):
    """Codebook storage, named as upstream's `EmbeddingEMA` so checkpoint keys map one to one."""

    def __init__(self, num_codes: int, code_dim: int, kmeans_init: bool):
        super().__init__()
        # Random unit rows until k-means replaces them; a model that skips init still tokenizes sanely.
        self.register_buffer("weight", F.normalize(torch.randn(num_codes, code_dim), dim=1))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_avg", self.weight.clone())
        self.register_buffer("initted", torch.tensor([0.0 if kmeans_init else 1.0]))


class NormEMAQuantizer(nn.Module):
    """Nearest-unit-vector quantizer with an EMA-on-the-sphere codebook update."""

    def __init__(self, num_codes: int, code_dim: int, decay: float = 0.99, beta: float = 1.0, kmeans_iters: int = 10):
        """Builds the quantizer.

        Args:
            num_codes: codebook size K.
            code_dim: code vector size C.
            decay: EMA decay of the codebook and of the usage statistics.
            beta: commitment loss weight.
            kmeans_iters: Lloyd iterations of the lazy k-means init (0 disables the init).
        """
        super().__init__()
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.decay = decay
        self.beta = beta
        self.kmeans_iters = kmeans_iters
        self.embedding = CodebookEMA(num_codes, code_dim, kmeans_init=kmeans_iters > 0)
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA of per-batch code counts
        self._known_initted = False  # caches a True `initted` so training steps skip the host sync

    @property
    def initted(self) -> bool:
        if not self._known_initted:
            self._known_initted = bool(self.embedding.initted.item())  # host sync until the first True
        return self._known_initted

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._known_initted = False  # the loaded `initted` may be 0 again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def kmeans_init(self, z_MC: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Replaces the codebook by spherical k-means centres of `z_MC` (unit vectors) and marks it initted."""
        centres_KC = spherical_kmeans(z_MC, self.num_codes, self.kmeans_iters, generator)
        if _ddp_active():
            dist.broadcast(centres_KC, src=0)
        self.embedding.weight.copy_(centres_KC)
        self.embedding.embed_avg.copy_(centres_KC)
        self.embedding.initted.fill_(1.0)
        self._known_initted = True

    def lookup(self, z_MC: torch.Tensor) -> torch.Tensor:
        """Code index [M] of each unit vector in `z_MC`."""
        with torch.autocast(device_type=z_MC.device.type, enabled=False):
            return _nearest(z_MC.float(), self.embedding.weight)

    @torch.no_grad()
    def ema_update(self, z_MC: torch.Tensor, idx_M: torch.Tensor) -> None:
        """One Norm-EMA step: usage EMA, then each used code moves towards its members' normalized mean."""
        codes_KC = self.embedding.weight
        bins_K = torch.bincount(idx_M, minlength=self.num_codes).to(codes_KC.dtype)
        sums_KC = torch.zeros_like(codes_KC).index_add_(0, idx_M, z_MC.to(codes_KC.dtype))
        if _ddp_active():
            dist.all_reduce(bins_K)
            dist.all_reduce(sums_KC)
        self.cluster_size.mul_(self.decay).add_(bins_K, alpha=1 - self.decay)
        used_K = bins_K > 0
        means_KC = F.normalize(sums_KC / bins_K.clamp(min=1)[:, None], dim=1)
        # An unused code's target is itself, so it only gets renormalized (a no-op for unit rows).
        target_KC = torch.where(used_K[:, None], means_KC, codes_KC)
        codes_KC.mul_(self.decay).add_(target_KC, alpha=1 - self.decay)
        codes_KC.copy_(F.normalize(codes_KC, dim=1))

    @torch.no_grad()
    def restart_codes(self, dead_K: torch.Tensor, z_MC: torch.Tensor) -> int:
        """Re-seeds the codes flagged in `dead_K` (bool [K]) with random rows of `z_MC` (unit vectors).

        Not in upstream BEiT v2: it rescues codes that the k-means init placed where the encoder no longer maps.
        Their usage statistics restart from zero.

        Returns:
            Number of codes re-seeded.
        """
        num_dead = int(dead_K.sum().item())  # host sync; called every few hundred steps only
        if num_dead == 0:
            return 0
        pick = torch.randint(0, z_MC.shape[0], (num_dead,), device=z_MC.device)
        new_codes = F.normalize(z_MC[pick].float(), dim=1).to(self.embedding.weight.dtype)
        if _ddp_active():
            dist.broadcast(new_codes, src=0)
        self.embedding.weight[dead_K] = new_codes
        self.cluster_size[dead_K] = 0.0
        return num_dead

    def forward(self, z_BNC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantizes encoder outputs.

        Args:
            z_BNC: encoder outputs [B, N, C] (normalized here).

        Returns:
            Straight-through quantized vectors [B, N, C] (value = code, gradient = identity to `z_BNC`'s
            normalized form), the commitment loss (scalar) and the code indices [B, N].
        """
        z_BNC = F.normalize(z_BNC.float(), dim=-1)
        z_MC = z_BNC.reshape(-1, self.code_dim)
        if self.training and self.kmeans_iters > 0 and not self.initted:
            self.kmeans_init(z_MC.detach())
        idx_M = self.lookup(z_MC.detach())
        zq_BNC = self.embedding.weight[idx_M].view_as(z_BNC)
        commit_loss = self.beta * F.mse_loss(zq_BNC.detach(), z_BNC)
        if self.training:
            self.ema_update(z_MC.detach(), idx_M)
        zq_BNC = z_BNC + (zq_BNC - z_BNC).detach()  # straight-through: forward = code, backward = identity
        return zq_BNC, commit_loss, idx_M.view(z_BNC.shape[:2])
