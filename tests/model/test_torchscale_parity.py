"""Parity of `beit3_core.BEiT3` with torchscale's `BEiT3` (PyPI torchscale==0.3.0) on the same weights.

The reference is built with its own seeded init, its LayerNorms and CLS/mask tokens are randomised (so a
swapped vision/language copy or a skipped norm changes the output), and its state dict is loaded into ours by
identical key names. Every output position is compared, padded rows included, at atol 1e-5 in fp32 eval mode
(architecture spec section 7). Needs `pip install --no-deps torchscale==0.3.0`; skipped without it.
"""

import functools

import pytest
import torch
from torch import nn

pytest.importorskip("torchscale")

import beit3_core  # noqa: E402
from beit3_core.checkpoint import load_released_state_dict  # noqa: E402
from benchmarks.torchscale_reference import (  # noqa: E402
    build_torchscale_beit3,
    torchscale_encoder_config,
    torchscale_forward,
)

ATOL = 1e-5
# Vision table [P + 3, D] = [7, 64] at img 32 / patch 16.
SMALL = dict(embed_dim=64, num_layers=2, num_heads=4, ffn_dim=256, img_size=32, patch_size=16, vocab_size=100)
CONFIGS = {
    "small": ("beit3_tiny", SMALL),
    "small_no_final_norm": ("beit3_tiny", {**SMALL, "normalize_output": False}),
    # Stochastic depth and dropout as fine-tuning sets them: identities in eval mode, in both models.
    "small_drop_path": ("beit3_tiny", {**SMALL, "drop_path_rate": 0.1, "dropout": 0.1}),
    "tiny": ("beit3_tiny", {}),
}
CASES = ["image", "image_masked", "text_padded", "pair_padded", "pair_padded_masked", "pair_captioning"]


@torch.no_grad()
def _randomise(reference: nn.Module) -> None:
    """Give every LayerNorm and the CLS/mask tokens non-default values (torchscale inits them to 1/0/0)."""
    for module in reference.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.2)
    reference.vision_embed.cls_token.normal_(0.0, 1.0)
    reference.vision_embed.mask_token.normal_(0.0, 1.0)


@functools.cache
def _models(config_name: str) -> tuple[nn.Module, beit3_core.BEiT3]:
    """(torchscale reference, ours) for a config of `CONFIGS`, shared by the tests: do not modify."""
    return _build_pair(*CONFIGS[config_name])


def _build_pair(name: str, overrides: dict) -> tuple[nn.Module, beit3_core.BEiT3]:
    """(torchscale reference, ours) with identical weights, both in eval mode."""
    config = beit3_core.get_config(name, **overrides)
    torch.manual_seed(0)
    reference = build_torchscale_beit3(config).eval()
    _randomise(reference)
    return reference, _ours_with(reference.state_dict(), name, overrides)


def _ours_with(state: dict[str, torch.Tensor], name: str = "beit3_tiny", overrides: dict = SMALL) -> beit3_core.BEiT3:
    """Our model holding (copies of) `state`, strictly loaded; built on the meta device to skip the init."""
    with torch.device("meta"):
        ours = beit3_core.build_model(name, **overrides)
    ours.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    return ours.eval()


def _captioning_mask(num_vision: int, text_len: int) -> torch.Tensor:
    """[N, N] bool, True = blocked: image rows see the image only; text row j sees the image and text 0..j."""
    num_tokens = num_vision + text_len
    allowed = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    allowed[:, :num_vision] = True
    allowed[num_vision:, num_vision:] = torch.ones(text_len, text_len, dtype=torch.bool).tril()
    return ~allowed


def _inputs(config: beit3_core.BEiT3Config, case: str, batch_size: int = 3, text_len: int = 7) -> dict:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch_size, config.in_chans, config.img_size, config.img_size, generator=generator)
    text = torch.randint(0, config.vocab_size, (batch_size, text_len), generator=generator)
    # Ragged: full, half and a lone first token.
    lengths = torch.tensor([text_len, text_len // 2, 1])[:batch_size]
    padding = torch.arange(text_len)[None, :] >= lengths[:, None]  # [B, T] True = pad
    image_mask = torch.rand(batch_size, config.num_patches, generator=generator) < 0.4
    image_mask[:, 0] = True  # at least one masked patch per image, even on a 2x2 grid
    if case == "image":
        return dict(image=image)
    if case == "image_masked":
        return dict(image=image, image_mask=image_mask)
    if case == "text_padded":
        return dict(text=text, text_padding_mask=padding)
    if case == "pair_padded":
        return dict(image=image, text=text, text_padding_mask=padding)
    if case == "pair_padded_masked":
        return dict(image=image, text=text, text_padding_mask=padding, image_mask=image_mask)
    if case == "pair_captioning":
        attn_mask = _captioning_mask(1 + config.num_patches, text_len)
        return dict(image=image, text=text, text_padding_mask=padding, image_mask=image_mask, attn_mask=attn_mask)
    raise ValueError(case)


def _max_diff(ours: beit3_core.BEiT3, reference: nn.Module, inputs: dict) -> float:
    with torch.no_grad():
        expected = torchscale_forward(reference, **inputs)
        actual = ours(**inputs)
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all()
    return (actual - expected).abs().max().item()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_matches_torchscale(config_name, case):
    reference, ours = _models(config_name)
    inputs = _inputs(ours.config, case)
    with torch.no_grad():
        expected = torchscale_forward(reference, **inputs)
        actual = ours(**inputs)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_attention_mask_conventions():
    # A long 0/1 mask (the release's own form) and a float mask mean the same as bool True = blocked.
    reference, ours = _models("small")
    inputs = _inputs(ours.config, "pair_captioning")
    for attn_mask in (inputs["attn_mask"].long(), inputs["attn_mask"].float()):
        assert _max_diff(ours, reference, {**inputs, "attn_mask": attn_mask}) <= ATOL


def test_per_sample_attention_mask_matches_torchscale_per_sample():
    # Ours also takes [B, N, N]; torchscale only [N, N], so compare each sample with its own 2-D mask.
    reference, ours = _models("small")
    inputs = _inputs(ours.config, "pair_padded_masked")
    num_tokens = 1 + ours.config.num_patches + inputs["text"].shape[1]
    blocked = torch.rand(3, num_tokens, num_tokens, generator=torch.Generator().manual_seed(2)) < 0.5
    blocked[:, :, 0] = False  # every row keeps the vision CLS, so no row is fully blocked
    with torch.no_grad():
        actual = ours(**inputs, attn_mask=blocked)
        for b in range(3):
            sample = {k: v[b : b + 1] for k, v in inputs.items()}
            expected = torchscale_forward(reference, **sample, attn_mask=blocked[b])
            torch.testing.assert_close(actual[b : b + 1], expected, atol=ATOL, rtol=0)


def test_drop_path_in_training_matches_torchscale():
    # Both draw one per-sample Bernoulli per branch (attention, then FFN, layer by layer) from the global RNG,
    # so with dropout off, training-mode outputs match too.
    reference, ours = _build_pair("beit3_tiny", {**SMALL, "drop_path_rate": 0.5})
    reference.train()
    ours.train()
    inputs = _inputs(ours.config, "pair_padded_masked")
    with torch.no_grad():
        torch.manual_seed(3)
        expected = torchscale_forward(reference, **inputs)
        torch.manual_seed(3)
        actual = ours(**inputs)
        dropped_in_eval = ours.eval()(**inputs)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    assert (actual - dropped_in_eval).abs().max() > 1e-3  # some branch was really dropped


def test_encoder_config_is_unilm_release_config():
    # The fields unilm `beit3/modeling_utils._get_base_config` sets, everything else at EncoderConfig's
    # defaults, must give exactly the config our mapping spells out.
    from torchscale.architecture.config import EncoderConfig

    config = beit3_core.get_config("beit3_base_patch16_224", drop_path_rate=0.1)
    unilm = EncoderConfig(
        img_size=224,
        patch_size=16,
        vocab_size=64010,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0.1,
        encoder_embed_dim=768,
        encoder_attention_heads=12,
        encoder_ffn_embed_dim=3072,
        encoder_layers=12,
        checkpoint_activations=False,
    )
    assert vars(torchscale_encoder_config(config)) == vars(unilm)


def test_released_layout_loads_through_loader():
    # `beit3.`-prefixed keys plus the heads of a pretrained file; a backbone without the final LN ignores it.
    reference, ours = _models("small_no_final_norm")
    _, with_norm = _models("small")
    final_norm = {f"beit3.{k}": v for k, v in with_norm.state_dict().items() if k.startswith("encoder.layer_norm.")}
    heads = {"mim_head.weight": torch.zeros(8, 64), "mlm_head.bias": torch.zeros(100)}
    released = {f"beit3.{k}": v for k, v in reference.state_dict().items()} | final_norm | heads
    loaded = beit3_core.build_model("beit3_tiny", **CONFIGS["small_no_final_norm"][1]).eval()
    report = load_released_state_dict(loaded, released)
    assert sorted(report.ignored_keys) == sorted(final_norm | heads) and len(final_norm) == 4
    assert report.interpolated is None
    inputs = _inputs(ours.config, "pair_captioning")
    assert _max_diff(loaded, reference, inputs) <= ATOL

    # A bare torchscale state dict loads too.
    reference, _ = _models("small")
    bare = beit3_core.build_model("beit3_tiny", **SMALL).eval()
    assert load_released_state_dict(bare, reference.state_dict()).ignored_keys == []
    assert _max_diff(bare, reference, inputs) <= ATOL


@pytest.mark.parametrize(
    "module_path",
    [
        "encoder.layers.0.self_attn_layer_norm.{m}",
        "encoder.layers.0.self_attn.inner_attn_ln.{m}",
        "encoder.layers.1.final_layer_norm.{m}",
        "encoder.layers.1.ffn.{m}.ffn_layernorm",
        "encoder.layer_norm.{m}",
    ],
)
def test_swapped_expert_norm_is_detected(module_path):
    # Controls that the comparison is sharp enough to catch a vision/language mix-up in a single LayerNorm.
    reference, _ = _models("small")
    state = dict(reference.state_dict())
    for param in ("weight", "bias"):
        key_a, key_b = (f"{module_path.format(m=m)}.{param}" for m in "AB")
        state[key_a], state[key_b] = state[key_b], state[key_a]
    swapped = _ours_with(state)
    assert _max_diff(swapped, reference, _inputs(swapped.config, "pair_captioning")) > 1e-3


def test_unused_position_rows_do_not_matter():
    # Position ids start at 2 in each table (spec G6): rows 0 and 1 are never read.
    reference, ours = _models("small")
    state = dict(reference.state_dict())
    for key in ("encoder.embed_positions.A.weight", "encoder.embed_positions.B.weight"):
        state[key] = state[key].clone()
        state[key][:2] = 1e3
    shifted = _ours_with(state)
    inputs = _inputs(ours.config, "pair_captioning")
    with torch.no_grad():
        torch.testing.assert_close(shifted(**inputs), ours(**inputs), atol=0, rtol=0)
