"""VQ-KD visual tokenizer of BEiT v2 (Peng et al., 2022, "BEiT v2: Masked Image Modeling with Vector-Quantized
Visual Tokenizers", arXiv:2208.06366), checked against microsoft/unilm `beit2/modeling_vqkd.py` and the ViT of
`beit2/modeling_finetune.py` (mean-pooling variant: `fc_norm` on the patch tokens, no `norm`, no head).

    images [B,3,H,W] in [0,1] -> x*2-1 -> encoder ViT -> encode_task_layer (fp32) -> l2-norm
    -> NormEMA quantizer -> straight-through codes -> decoder ViT (patch 1 over the code map)
    -> decode_task_layer -> features compared with the teacher's by cosine distance.

Module and parameter names equal the released checkpoints' keys (`encoder.blocks.0.attn.q_bias`,
`quantize.embedding.weight`, ...), so official weights load with a key filter and no renaming.

Legend: B batch, N patches (grid*grid, row-major), D width, H heads, Dh head dim, C code dim, T teacher dim.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.vqkd.quantizer import NormEMAQuantizer

__all__ = ["VQKD", "VQKDConfig", "build_vqkd", "list_vqkd_configs", "vqkd_base", "vqkd_tiny"]

LN_EPS = 1e-6


@dataclass(kw_only=True)
class VQKDConfig:
    """Sizes and quantizer settings of a VQ-KD tokenizer (defaults = the official ViT-B/16 shape)."""

    img_size: int = 224  # training resolution; positional embeddings are resized for other sizes
    patch_size: int = 16  # pixels per token side
    encoder_depth: int = 12
    encoder_dim: int = 768
    encoder_heads: int = 12
    decoder_depth: int = 3  # 3 in the recommended official tokenizer, 1 in the other released ones
    decoder_dim: int = 768
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    code_dim: int = 32  # low code dim keeps the cosine codebook well used (BEiT v2 Sec. 2.2)
    num_codes: int = 8192  # K; sets the MDM vision head size. ~1024 is enough below ~50k images
    teacher_dim: int = 512  # T: 512 CLIP-B/16, 768 DINO-B/16, 156 HOG+colour, 112 EfficientNet-Lite0
    ema_decay: float = 0.99  # codebook and usage EMA
    commitment_beta: float = 1.0
    kmeans_iters: int = 10  # lazy spherical k-means init on the first training batch; 0 = keep random codes

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        for name in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads:
                raise ValueError(f"{name}_dim={dim} is not divisible by {name}_heads={heads}")
        if self.num_codes < 2 or self.code_dim < 1 or self.teacher_dim < 1:
            raise ValueError("num_codes must be >= 2 and code_dim, teacher_dim >= 1")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in (0, 1)")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def vqkd_base(**overrides) -> VQKDConfig:
    """The official `vqkd_encoder_base_decoder_3x768x12_clip` shape."""
    return VQKDConfig(**overrides)


def vqkd_tiny(**overrides) -> VQKDConfig:
    """The small-data default: 4x192 encoder, 1x192 decoder, HOG+colour teacher (156-d), 1024 codes."""
    fields = dict(encoder_depth=4, encoder_dim=192, encoder_heads=3, decoder_depth=1, decoder_dim=192)
    fields.update(decoder_heads=3, num_codes=1024, teacher_dim=156)
    return VQKDConfig(**(fields | overrides))


_CONFIGS = {"vqkd_tiny": vqkd_tiny, "vqkd_base": vqkd_base}


def list_vqkd_configs() -> list[str]:
    return sorted(_CONFIGS)


def build_vqkd(name: str, **overrides) -> "VQKD":
    """Builds a randomly initialized tokenizer from a named config plus field overrides."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown VQ-KD config {name!r}; known: {list_vqkd_configs()}")
    return VQKD(_CONFIGS[name](**overrides))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, N, D], row-major


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases only (k has none), as in BEiT."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, dim = x_BND.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x_BND, self.qkv.weight, bias)  # [B, N, 3D]
        qkv = qkv.view(batch, num_tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, N, Dh], scale Dh^-0.5
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block without layer scale or drop path (the tokenizer uses neither)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Mean-pooling-variant ViT: returns `fc_norm` of the patch tokens; the cls token only takes part in attention."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, depth: int, heads: int, mlp: float):
        super().__init__()
        self.grid_size = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp) for _ in range(depth)])
        self.fc_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positional embeddings [1, 1+h*w, D], bicubically resized when the input grid differs."""
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(cls_pos.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        patch = self.patch_embed.proj.stride[0]
        pos = self._pos_embed(x_BCHW.shape[2] // patch, x_BCHW.shape[3] // patch)
        x = self.patch_embed(x_BCHW)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos  # [B, 1+N, D]
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, 1:])  # [B, N, D]


def _task_layer(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))  # keys .0.* and .2.*


@torch.no_grad()
def _trunc_normal(tensor: torch.Tensor, std: float = 0.02, bound: float = 2.0) -> None:
    """Normal(0, std) truncated at +-bound*std by inverse-CDF sampling (nn.init.trunc_normal_ is ~100x slower)."""
    edge = math.erf(bound / math.sqrt(2))  # uniform on (-edge, edge) maps to (-bound, bound) standard normals
    tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-bound * std, bound * std)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        _trunc_normal(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ViT):
        _trunc_normal(module.pos_embed)
        _trunc_normal(module.cls_token)


class VQKD(nn.Module):
    """Vector-quantized knowledge-distillation tokenizer: images -> discrete codes, trained to predict a teacher."""

    def __init__(self, config: VQKDConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = ViT(c.img_size, c.patch_size, 3, c.encoder_dim, c.encoder_depth, c.encoder_heads, c.mlp_ratio)
        self.decoder = ViT(c.grid_size, 1, c.code_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio)
        self.encode_task_layer = _task_layer(c.encoder_dim, c.code_dim)
        self.decode_task_layer = _task_layer(c.decoder_dim, c.teacher_dim)
        self.quantize = NormEMAQuantizer(c.num_codes, c.code_dim, c.ema_decay, c.commitment_beta, c.kmeans_iters)
        self.apply(_init_weights)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides 1-D parameters (norms, biases)."""
        return {f"{part}.{name}" for part in ("encoder", "decoder") for name in ("pos_embed", "cls_token")}

    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm pre-quantization vectors [B, N, C] of images [B, 3, H, W] in [0, 1]."""
        h_BND = self.encoder(images * 2 - 1)
        # fp32 even under autocast, as upstream: the 32-d projection and the cosine lookup are precision-bound.
        with torch.autocast(device_type=h_BND.device.type, enabled=False):
            z_BNC = self.encode_task_layer(h_BND.float())
        return F.normalize(z_BNC, dim=-1)

    def decode(self, zq_BNC: torch.Tensor) -> torch.Tensor:
        """Teacher-space predictions [B, N, T] from (straight-through) codes [B, N, C]."""
        batch, num_tokens, code_dim = zq_BNC.shape
        side = math.isqrt(num_tokens)
        code_map = zq_BNC.transpose(1, 2).reshape(batch, code_dim, side, side)  # row-major grid
        return self.decode_task_layer(self.decoder(code_map))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids [B, grid*grid] (int64, row-major) of float images [B, 3, H, W] in [0, 1].

        Never changes the codebook or its statistics, whatever the module's mode.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"expected float images [B, 3, H, W] in [0, 1], got {images.dtype} {tuple(images.shape)}")
        low, high = torch.aminmax(images)
        if low < -1e-3 or high > 1 + 1e-3:  # host sync, once per batch: catches 0-255 or mean/std inputs
            raise ValueError(f"images must lie in [0, 1] (got [{float(low):.3g}, {float(high):.3g}])")
        z_BNC = self.encode_features(images)
        return self.quantize.lookup(z_BNC.reshape(-1, self.config.code_dim)).view(z_BNC.shape[:2])

    def forward(self, images: torch.Tensor, target_BNT: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward: quantize, decode and score against teacher features.

        Args:
            images: [B, 3, H, W] in [0, 1].
            target_BNT: teacher features on the same patch grid.

        Returns:
            `loss` (= `rec_loss` + `commit_loss`), `rec_loss` (mean cosine distance), `commit_loss`, `tokens`
            [B, N] and `z` [B, N, C] (detached unit vectors, e.g. for dead-code restarts).
        """
        z_BNC = self.encode_features(images)
        zq_BNC, commit_loss, tokens_BN = self.quantize(z_BNC)
        pred_BNT = self.decode(zq_BNC)
        if pred_BNT.shape != target_BNT.shape:
            raise ValueError(f"teacher features {tuple(target_BNT.shape)} do not match {tuple(pred_BNT.shape)}")
        rec_loss = (1 - F.cosine_similarity(pred_BNT.float(), target_BNT.float(), dim=-1, eps=1e-6)).mean()
        return {
            "loss": rec_loss + commit_loss,
            "rec_loss": rec_loss,
            "commit_loss": commit_loss,
            "tokens": tokens_BN,
            "z": z_BNC.detach(),
        }
