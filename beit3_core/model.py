"""The BEiT-3 Multiway Transformer backbone.

Paper: "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks"
(arXiv 2208.10442). Checked against torchscale's `BEiT3` (microsoft/torchscale) as wrapped by the released
fine-tuning code (microsoft/unilm `beit3/`): same parameter names, same outputs to <= 1e-5 in fp32.

Legend: B batch, P patches, T text tokens, N = total sequence length, D embed dim.
Sequence order: [vision CLS, patches..., text tokens...]; tokens before the split use the vision expert A,
tokens after it the language expert B.
"""

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from beit3_core.config import BEiT3Config
from beit3_core.layers.attention import MultiwaySelfAttention
from beit3_core.layers.drop_path import DropPath
from beit3_core.layers.embedding import MultiwayPositions, VisionEmbedding
from beit3_core.layers.feedforward import FeedForward
from beit3_core.layers.multiway import LANGUAGE, VISION, VISION_LANGUAGE, Multiway, maybe_multiway, route
from beit3_core.layers.window import WindowPartition


class EncoderLayer(nn.Module):
    """Pre-LN block with Magneto sub-LN: x + Attn(LN(x)); x + FFN(LN(x)), both per expert."""

    def __init__(self, config: BEiT3Config, drop_path: float, vl_expert: bool):
        super().__init__()
        decoupled = config.attn_sharing == "decoupled"
        subln = config.norm == "subln"
        eps = config.layernorm_eps
        dim = config.embed_dim
        ffn_experts = (VISION, LANGUAGE, VISION_LANGUAGE) if vl_expert else (VISION, LANGUAGE)
        self.has_vl_expert = vl_expert
        self.self_attn = MultiwaySelfAttention(dim, config.num_heads, decoupled, subln, eps, config.dropout)
        self.self_attn_layer_norm = maybe_multiway(lambda: nn.LayerNorm(dim, eps=eps), decoupled)
        # The FFN experts and their pre-FFN LN (named `final_layer_norm` in the release) are multiway in both
        # architectures.
        self.ffn = Multiway(lambda: FeedForward(dim, config.ffn_dim, subln, eps, config.dropout), ffn_experts)
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps), ffn_experts)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        segments: list[torch.Tensor],
        experts: list[str],
        ffn_experts: list[str],
        attn_mask: torch.Tensor | None,
        windows: WindowPartition | None = None,
    ) -> list[torch.Tensor]:
        """`windows`: attend within the windows of one patch-grid segment only (ViTDet); `attn_mask` is then
        unused. Drop path still draws per sequence, not per window."""
        batch_size = segments[0].shape[0]
        normed = [route(self.self_attn_layer_norm, e)(x) for x, e in zip(segments, experts, strict=True)]
        attn = self.self_attn(normed, experts, attn_mask, windows)
        scale = self.drop_path.sample_scale(batch_size, segments[0])
        segments = [x + (a if scale is None else a * scale) for x, a in zip(segments, attn, strict=True)]

        scale = self.drop_path.sample_scale(batch_size, segments[0])
        out = []
        for x, e in zip(segments, ffn_experts, strict=True):
            f = self.ffn(self.final_layer_norm(x, e), e)
            out.append(x + (f if scale is None else f * scale))
        return out


class Encoder(nn.Module):
    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.embed_positions = MultiwayPositions(config.num_patches + 3, config.max_text_positions, config.embed_dim)
        # Stochastic depth grows linearly with depth: layer i drops with rate * i / (L - 1).
        num_layers = config.num_layers
        drop_rates = [config.drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]
        first_vl = config.num_layers - config.vl_ffn_layers
        self.layers = nn.ModuleList(
            EncoderLayer(config, drop_rates[i], vl_expert=i >= first_vl) for i in range(config.num_layers)
        )
        decoupled = config.attn_sharing == "decoupled"
        self.layer_norm = (
            maybe_multiway(lambda: nn.LayerNorm(config.embed_dim, eps=config.layernorm_eps), decoupled)
            if config.normalize_output
            else None
        )


class BEiT3(nn.Module):
    """BEiT-3 backbone: returns the final hidden states [B, N, D] for images, texts or image-text pairs."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.text_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.vision_embed = VisionEmbedding(config.img_size, config.patch_size, config.in_chans, config.embed_dim)
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.grad_checkpointing = config.grad_checkpointing
        init_weights(self, config)

    @property
    def num_patches(self) -> int:
        return self.vision_embed.num_patches

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode an image, a text, or both.

        Args:
            image: [B, C, H, W] with H == W == config.img_size.
            text: [B, T] int64 token ids, T <= config.max_text_len.
            text_padding_mask: [B, T] bool, True = padding (ignored as a key; the row is still computed).
            image_mask: [B, P] bool, True = patch replaced by the learned mask token.
            attn_mask: [N, N] or [B, N, N]; True (or nonzero) = query row may NOT attend to that key column.

        Returns:
            [B, N, D] final hidden states: [vision CLS, patches..., text tokens...].
        """
        segments, experts, key_padding = self._embed(image, text, text_padding_mask, image_mask)
        seq_len = sum(x.shape[1] for x in segments)
        mask = _attention_mask(key_padding, attn_mask, seq_len, segments[0].shape[0])
        is_pair = len(segments) == 2

        for layer in self.encoder.layers:
            ffn_experts = [VISION_LANGUAGE] * len(segments) if is_pair and layer.has_vl_expert else experts
            if self.grad_checkpointing and self.training:
                segments = checkpoint(layer, segments, experts, ffn_experts, mask, use_reentrant=False)
            else:
                segments = layer(segments, experts, ffn_experts, mask)

        if self.encoder.layer_norm is not None:
            segments = [route(self.encoder.layer_norm, e)(x) for x, e in zip(segments, experts, strict=True)]
        return torch.cat(segments, dim=1) if is_pair else segments[0]

    def _embed(self, image, text, text_padding_mask, image_mask):
        """Embeddings plus positions per segment, with padded text rows zeroed (as the reference does)."""
        if image is None and text is None:
            raise ValueError("BEiT3.forward needs an image, a text, or both")
        segments, experts, key_padding = [], [], None
        batch_size = (image if image is not None else text).shape[0]
        if image is not None:
            _check_image(image, image_mask, self.config)
            x = self.vision_embed(image, image_mask)
            segments.append(self.dropout(self.encoder.embed_positions(x, VISION)))
            experts.append(VISION)
        elif image_mask is not None:
            raise ValueError("image_mask given without an image")
        if text is not None:
            _check_text(text, text_padding_mask, batch_size, self.config)
            x = self.dropout(self.encoder.embed_positions(self.text_embed(text), LANGUAGE))
            if text_padding_mask is not None:
                x = x * (1 - text_padding_mask.unsqueeze(-1).type_as(x))
                key_padding = text_padding_mask
                if image is not None:
                    vision_pad = text_padding_mask.new_zeros(batch_size, segments[0].shape[1])
                    key_padding = torch.cat([vision_pad, text_padding_mask], dim=1)
            segments.append(x)
            experts.append(LANGUAGE)
        elif text_padding_mask is not None:
            raise ValueError("text_padding_mask given without a text")
        return segments, experts, key_padding

    def no_weight_decay_parameters(self) -> set[str]:
        """Names of parameters that take no weight decay: biases, norms, embeddings, CLS and mask tokens.

        Declared by module type rather than by matching parameter names, so task heads that build on the
        backbone with their own norms and biases are covered by the same rule.
        """
        return no_weight_decay_parameters(self)


def no_weight_decay_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of `model` that take no weight decay (see `BEiT3.no_weight_decay_parameters`)."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        exempt_module = isinstance(module, nn.LayerNorm | nn.Embedding | VisionEmbedding | MultiwayPositions)
        for param_name, param in module.named_parameters(recurse=False):
            # VisionEmbedding's own parameters are the CLS and mask tokens (its conv is a child module);
            # anything of rank <= 1 is a bias, a gain or a scalar such as a logit scale.
            if exempt_module or param_name == "bias" or param.ndim <= 1:
                names.add(prefix + param_name)
    return names


def _check_image(image: torch.Tensor, image_mask: torch.Tensor | None, config: BEiT3Config) -> None:
    if image.ndim != 4 or image.shape[1] != config.in_chans:
        raise ValueError(f"image must be [B, {config.in_chans}, H, W], got shape {tuple(image.shape)}")
    if image.shape[-2:] != (config.img_size, config.img_size):
        raise ValueError(
            f"image is {image.shape[-2]}x{image.shape[-1]} but the model expects {config.img_size}x{config.img_size}"
            " (build the model with img_size=... and interpolate positions when loading weights)"
        )
    if image_mask is not None and tuple(image_mask.shape) != (image.shape[0], config.num_patches):
        raise ValueError(
            f"image_mask must be [B={image.shape[0]}, P={config.num_patches}], got shape {tuple(image_mask.shape)}"
        )
    if image_mask is not None and image_mask.dtype != torch.bool:
        raise ValueError(f"image_mask must be bool (True = masked), got {image_mask.dtype}")


def _check_text(text: torch.Tensor, padding: torch.Tensor | None, batch_size: int, config: BEiT3Config) -> None:
    if text.ndim != 2 or text.shape[0] != batch_size:
        raise ValueError(f"text must be [B={batch_size}, T] token ids, got shape {tuple(text.shape)}")
    if text.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"text must hold integer token ids, got {text.dtype}")
    if text.shape[1] > config.max_text_len:
        raise ValueError(
            f"text has {text.shape[1]} tokens but the position table holds at most {config.max_text_len}"
            f" (max_text_positions={config.max_text_positions} minus the offset of 2)"
        )
    _check_token_range(text, config.vocab_size)
    if padding is not None and padding.shape != text.shape:
        raise ValueError(f"text_padding_mask shape {tuple(padding.shape)} != text shape {tuple(text.shape)}")
    if padding is not None and padding.dtype != torch.bool:
        raise ValueError(f"text_padding_mask must be bool (True = padding), got {padding.dtype}")


def _check_token_range(text: torch.Tensor, vocab_size: int) -> None:
    # One host sync; an out-of-range id would otherwise surface as an opaque index error or a CUDA assert.
    if text.is_meta or text.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = int(text.min()), int(text.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"text ids must lie in [0, vocab_size={vocab_size}), got ids in [{low}, {high}]")


def _attention_mask(
    key_padding: torch.Tensor | None, attn_mask: torch.Tensor | None, seq_len: int, batch_size: int
) -> torch.Tensor | None:
    """Combine key padding [B, N] and a blocking mask into SDPA's bool "may attend" mask, or None."""
    allowed = None
    if attn_mask is not None:
        if attn_mask.shape not in ((seq_len, seq_len), (batch_size, seq_len, seq_len)):
            raise ValueError(
                f"attn_mask must be [N, N] or [B, N, N] with N={seq_len}, B={batch_size}; got {tuple(attn_mask.shape)}"
            )
        allowed = attn_mask == 0  # nonzero / True = blocked, as in the reference
        allowed = allowed.unsqueeze(-3) if allowed.ndim == 3 else allowed  # [B, 1, N, N] or [N, N]
    if key_padding is not None:
        keys = ~key_padding[:, None, None, :]  # [B, 1, 1, N]
        allowed = keys if allowed is None else allowed & keys
    return allowed


@torch.no_grad()
def init_weights(model: BEiT3, config: BEiT3Config) -> None:
    """Initialise as the reference does (see `BEiT3Config.init_mode`)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if config.init_mode == "unilm":
                trunc_normal_one_sigma_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    text_std = config.text_embed_init_std if config.text_embed_init_std is not None else config.embed_dim**-0.5
    nn.init.normal_(model.text_embed.weight, std=text_std)
    for table in (model.encoder.embed_positions.A, model.encoder.embed_positions.B):
        nn.init.normal_(table.weight, std=config.pos_init_std)
    if config.init_mode == "magneto":
        for layer in model.encoder.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                for proj in _copies(getattr(layer.self_attn, name)):
                    nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
            for proj in _copies(layer.self_attn.out_proj):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)
        # Magneto's gain for sub-LN: sqrt(log 2L) on fc1, fc2, out_proj and v_proj (weights and biases).
        gain = math.sqrt(math.log(2 * config.num_layers))
        for name, param in model.encoder.named_parameters():
            if any(key in name for key in ("fc1", "fc2", "out_proj", "v_proj")):
                param.mul_(gain)


@torch.no_grad()
def trunc_normal_one_sigma_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std) truncated at +-std: the released fine-tuning code's Linear init (empirical std ~0.54 std).

    Inverse-CDF sampling: u ~ U(Phi(-1), Phi(1)), x = std * sqrt(2) * erfinv(2u - 1). torch's `trunc_normal_`
    gives the same distribution but is an order of magnitude slower for bounds this tight.
    """
    low = 0.5 * (1 + math.erf(-1 / math.sqrt(2)))
    tensor.uniform_(2 * low - 1, 1 - 2 * low)  # 2u - 1 for u in [Phi(-1), Phi(1)]
    return tensor.erfinv_().mul_(std * math.sqrt(2))


def _copies(module: nn.Module) -> list[nn.Module]:
    return list(module.children()) if isinstance(module, Multiway) else [module]
