"""torchscale's `BEiT3` as a reference implementation, built from a `BEiT3Config`.

Reference: microsoft/torchscale, PyPI `torchscale==0.3.0` (`torchscale/model/BEiT3.py`), the backbone that
every released BEiT-3 checkpoint (microsoft/unilm `beit3/`, prefix `beit3.`) loads into. Used only by parity
tests and speed benchmarks; install it without its dependencies:

    pip install --no-deps torchscale==0.3.0

torchscale imports two packages that the BEiT-3 path never needs at run time: `timm` (only
`timm.models.layers.drop_path`, used by `DropPath`) and `fairscale` (only `fairscale.nn.checkpoint_wrapper`
and `fairscale.nn.wrap`, applied when `checkpoint_activations` / `fsdp` are set, which this module never
sets). When the real packages are absent, minimal stand-ins for exactly those names are placed in
`sys.modules` while torchscale is imported. `apex` is hidden during that import: with apex importable,
torchscale binds `FusedLayerNorm`, whose last bits differ from `torch.nn.LayerNorm` (architecture spec G1).
"""

import contextlib
import importlib
import importlib.util
import sys
import types

import torch
from torch import nn

from beit3_core.config import BEiT3Config

# torchscale modules that bind `LayerNorm` from apex at import time (try/except ModuleNotFoundError).
_TORCHSCALE_MODULES = (
    "torchscale.component.multihead_attention",
    "torchscale.component.feedforward_network",
    "torchscale.architecture.encoder",
    "torchscale.model.BEiT3",
)


def _drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """timm's `drop_path`: zero a whole sample's branch with probability `drop_prob`, rescale survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def _identity_wrapper(module: nn.Module, *args, **kwargs) -> nn.Module:
    """Stand-in for fairscale's `checkpoint_wrapper` / `wrap`: the forward result is the same without them."""
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    """`timm.models.layers.drop_path` and `fairscale.nn.{checkpoint_wrapper,wrap}`, for packages not installed."""
    modules = {}
    if "timm" not in sys.modules and importlib.util.find_spec("timm") is None:
        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = _drop_path
        models = types.ModuleType("timm.models")
        models.layers = layers
        timm = types.ModuleType("timm")
        timm.models = models
        modules |= {"timm": timm, "timm.models": models, "timm.models.layers": layers}
    if "fairscale" not in sys.modules and importlib.util.find_spec("fairscale") is None:
        fairscale_nn = types.ModuleType("fairscale.nn")
        fairscale_nn.checkpoint_wrapper = _identity_wrapper
        fairscale_nn.wrap = _identity_wrapper
        fairscale = types.ModuleType("fairscale")
        fairscale.nn = fairscale_nn
        modules |= {"fairscale": fairscale, "fairscale.nn": fairscale_nn}
    return modules


@contextlib.contextmanager
def _patched_modules(patches: dict[str, types.ModuleType | None]):
    """Set `sys.modules` entries for the duration of the block, then restore exactly what was there."""
    missing = object()
    saved = {name: sys.modules.get(name, missing) for name in patches}
    sys.modules.update(patches)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _import_torchscale():
    """(torchscale `BEiT3` class, `EncoderConfig` class).

    The stand-ins are visible only while torchscale imports (it binds the names it needs), so other code in the
    process never sees a fake `timm` or `fairscale`. A None entry makes `import apex` raise ModuleNotFoundError,
    which torchscale catches and falls back to `torch.nn.LayerNorm`.
    """
    hide_apex = {name: None for name in list(sys.modules) if name == "apex" or name.startswith("apex.")}
    with _patched_modules(_stand_ins() | hide_apex | {"apex": None}):
        for name in _TORCHSCALE_MODULES:
            importlib.import_module(name)
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3
    return BEiT3, EncoderConfig


def torchscale_encoder_config(config: BEiT3Config):
    """torchscale `EncoderConfig` equivalent to `config` (as unilm `beit3/modeling_utils.py` builds it)."""
    if not config.is_release_layout:
        raise ValueError(
            "torchscale implements only the release architecture (attn_sharing='decoupled', norm='subln',"
            f" vl_ffn_layers=0); got attn_sharing={config.attn_sharing!r}, norm={config.norm!r},"
            f" vl_ffn_layers={config.vl_ffn_layers}"
        )
    _, EncoderConfig = _import_torchscale()
    return EncoderConfig(
        vocab_size=config.vocab_size,
        encoder_embed_dim=config.embed_dim,
        encoder_layers=config.num_layers,
        encoder_attention_heads=config.num_heads,
        encoder_ffn_embed_dim=config.ffn_dim,
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        max_source_positions=config.max_text_positions,
        layernorm_eps=config.layernorm_eps,
        normalize_output=config.normalize_output,
        drop_path_rate=config.drop_path_rate,
        # Ours has one dropout: after the attention out_proj, after fc2 and on the embeddings, which is
        # torchscale's `dropout`; it has no dropout on attention probabilities or after the activation.
        dropout=config.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        multiway=True,
        subln=True,
        encoder_normalize_before=True,
        deepnorm=False,
        layernorm_embedding=False,
        no_scale_embedding=True,
        no_output_layer=True,  # else torchscale adds an unused vocab projection to the encoder output
        share_encoder_input_output_embed=False,
        rel_pos_buckets=0,
        max_rel_pos=0,
        xpos_rel_pos=False,
        moe_freq=0,
        bert_init=False,
        checkpoint_activations=False,
        fsdp=False,
    )


def build_torchscale_beit3(config: BEiT3Config) -> nn.Module:
    """torchscale's `BEiT3` with the shape of `config` and torchscale's own random init (call `torch.manual_seed`
    first for reproducible weights). Its state-dict keys are `BEiT3`'s keys exactly."""
    BEiT3, _ = _import_torchscale()
    model = BEiT3(torchscale_encoder_config(config))
    norms = {type(m) for m in model.modules() if "LayerNorm" in type(m).__name__}
    if norms != {nn.LayerNorm}:
        # torchscale was imported earlier in this process with apex importable (spec G1).
        raise RuntimeError(f"torchscale uses {sorted(n.__qualname__ for n in norms)}, not torch.nn.LayerNorm")
    return model


def torchscale_forward(
    model: nn.Module,
    image: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    text_padding_mask: torch.Tensor | None = None,
    image_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run torchscale's `BEiT3` with `BEiT3.forward`'s argument conventions; returns `encoder_out` [B, N, D].

    Args:
        image: [B, C, H, W].
        text: [B, T] token ids.
        text_padding_mask: [B, T] bool, True = padding.
        image_mask: [B, P] bool, True = masked patch.
        attn_mask: [N, N], True / nonzero = blocked. torchscale supports only a mask shared by the batch, and
            a bool mask would be added as +1 instead of blocking (spec G5), so bool is converted to long.
    """
    if attn_mask is not None:
        if attn_mask.ndim != 2:
            raise ValueError(f"torchscale supports only a 2-D [N, N] attn_mask, got shape {tuple(attn_mask.shape)}")
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask.long()
    if text_padding_mask is not None:
        text_padding_mask = text_padding_mask.bool()
    out = model(
        textual_tokens=text,
        visual_tokens=image,
        text_padding_position=text_padding_mask,
        attn_mask=attn_mask,
        vision_masked_position=image_mask,
    )
    return out["encoder_out"]
