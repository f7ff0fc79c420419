"""BEiT-3 model configurations and the registry of named sizes.

The released checkpoints (microsoft/unilm `beit3/`, torchscale `BEiT3`) define base and large; the paper's
giant (arXiv 2208.10442) is listed with its published shape. `beit3_tiny` is a CPU-sized twin used by tests
and the demo.

Two architectures share one code path:
- "release" (default): decoupled Multiway. Every per-token module (q/k/v/out projections, all layer norms,
  the FFN, the output norm, the position table) has a vision copy `A` and a language copy `B`; only the
  softmax attention over the joint sequence is shared. Magneto sub-LN. Loads the released weights.
- "paper": `attn_sharing="shared"` (one attention module for every modality) and vision-language FFN experts
  `C` in the top `vl_ffn_layers` layers (3 in the paper), usually with `norm="preln"`. Not loadable from any
  released checkpoint.
"""

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BEiT3Config:
    """Shape and behaviour of one BEiT-3 backbone. Defaults are the released base model."""

    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 64010
    """Rows of the text embedding (and of the MLM head). The released spm has 64000 pieces; 8 rows are unused."""
    visual_vocab_size: int = 8192
    """Codebook size of the visual tokenizer: the output size of the MIM head."""
    max_text_positions: int = 1024
    """Rows of the text position table; ids start at 2, so texts hold at most this minus 2 tokens."""
    layernorm_eps: float = 1e-5
    normalize_output: bool = True
    """Apply the final multiway LayerNorm. The released IN-1k and VQA models switch it off."""
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    attn_sharing: Literal["decoupled", "shared"] = "decoupled"
    vl_ffn_layers: int = 0
    """Number of top layers with a vision-language FFN expert used by image-text pairs (paper: 3)."""
    norm: Literal["subln", "preln"] = "subln"
    init_mode: Literal["unilm", "magneto"] = "unilm"
    """"unilm": what the released fine-tuning code runs (every Linear trunc-normal std 0.02 cut at one sigma,
    which overwrites the Magneto gain); "magneto": torchscale's own init with the sqrt(log 2L) gain kept."""
    pos_init_std: float = 1.0
    """Std of the position tables at init; 1.0 is what the release executes (a plain nn.Embedding)."""
    text_embed_init_std: float | None = None
    """Std of the text embedding at init; None = embed_dim ** -0.5, what the release executes. Pretraining
    from scratch sets 1.0 (the same scale as the position tables): at D^-0.5 the position signal is ~14x the
    token signal at init and the MLM head stays at unigram level for the first thousand steps."""
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if not 0 <= self.vl_ffn_layers <= self.num_layers:
            raise ValueError(f"vl_ffn_layers={self.vl_ffn_layers} must lie in [0, num_layers={self.num_layers}]")
        if self.attn_sharing not in ("decoupled", "shared"):
            raise ValueError(f"attn_sharing must be 'decoupled' or 'shared', got {self.attn_sharing!r}")
        if self.norm not in ("subln", "preln"):
            raise ValueError(f"norm must be 'subln' or 'preln', got {self.norm!r}")
        if self.init_mode not in ("unilm", "magneto"):
            raise ValueError(f"init_mode must be 'unilm' or 'magneto', got {self.init_mode!r}")
        for name in ("pos_init_std", "text_embed_init_std"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def max_text_len(self) -> int:
        # Position ids start at 2 (fairseq offset), so rows 0 and 1 are never indexed.
        return self.max_text_positions - 2

    @property
    def is_release_layout(self) -> bool:
        return self.attn_sharing == "decoupled" and self.vl_ffn_layers == 0 and self.norm == "subln"

    def replace(self, **overrides) -> "BEiT3Config":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown BEiT3Config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODEL_CONFIGS: dict[str, BEiT3Config] = {
    # CPU-sized twin for tests and the demo: same layout as the release, 224 px so the 14x14 token grid of
    # the visual tokenizer matches.
    "beit3_tiny": BEiT3Config(embed_dim=192, num_layers=4, num_heads=3, ffn_dim=768),
    "beit3_base_patch16_224": BEiT3Config(),
    "beit3_large_patch16_224": BEiT3Config(embed_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096),
    # The paper's model: 40 layers, width 1408, FFN 6144, 16 heads (head_dim 88), patch 14, shared attention,
    # VL-FFN in the top 3 layers, pre-LN.
    "beit3_giant_patch14_224": BEiT3Config(
        embed_dim=1408,
        num_layers=40,
        num_heads=16,
        ffn_dim=6144,
        patch_size=14,
        attn_sharing="shared",
        vl_ffn_layers=3,
        norm="preln",
        drop_path_rate=0.1,
    ),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def get_config(name: str, **overrides) -> BEiT3Config:
    """The named config with `overrides` applied (e.g. `img_size=384`, `drop_path_rate=0.1`)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown BEiT-3 model {name!r}; known: {', '.join(list_models())}")
    return MODEL_CONFIGS[name].replace(**overrides)
