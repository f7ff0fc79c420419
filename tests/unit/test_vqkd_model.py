"""VQKD model of preprocessing.vqkd: configs, encode contract (deterministic, row-major), training forward."""

import pytest
import torch

from preprocessing.vqkd.model import VQKD, VQKDConfig, build_vqkd, list_vqkd_configs, vqkd_base, vqkd_tiny


def _tiny(**overrides) -> VQKD:
    torch.manual_seed(0)
    fields = dict(img_size=32, patch_size=8, num_codes=16, teacher_dim=12, encoder_depth=2) | overrides
    return VQKD(vqkd_tiny(**fields)).eval()


def test_named_configs() -> None:
    assert list_vqkd_configs() == ["vqkd_base", "vqkd_tiny"]
    base = vqkd_base()
    assert (base.encoder_depth, base.encoder_dim, base.encoder_heads, base.num_codes, base.code_dim) == (
        12,
        768,
        12,
        8192,
        32,
    )
    tiny = vqkd_tiny()
    assert (tiny.encoder_depth, tiny.encoder_dim, tiny.encoder_heads, tiny.decoder_depth, tiny.decoder_dim) == (
        4,
        192,
        3,
        1,
        192,
    )
    assert tiny.grid_size == 14 and tiny.teacher_dim == 156
    model = build_vqkd("vqkd_tiny", img_size=32, num_codes=8)
    assert (model.num_codes, model.grid_size) == (8, 2)
    with pytest.raises(ValueError, match="unknown VQ-KD config"):
        build_vqkd("vqkd_huge")


@pytest.mark.parametrize(
    "fields", [{"img_size": 30}, {"encoder_dim": 100, "encoder_heads": 3}, {"ema_decay": 1.0}, {"num_codes": 1}]
)
def test_config_rejects_bad_values(fields: dict) -> None:
    with pytest.raises(ValueError):
        VQKDConfig(**fields)


def test_encode_is_deterministic_and_row_major() -> None:
    model = _tiny()
    images = torch.rand(3, 3, 32, 32)
    tokens = model.encode(images)
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 16)
    assert torch.equal(tokens, model.encode(images))
    assert torch.equal(tokens[1:2], model.encode(images[1:2]))  # no cross-image dependence
    # Row-major: token r*grid + c is the lookup of the encoder vector at grid cell (r, c).
    z = model.encode_features(images)  # [B, N, C]
    expected = (z @ model.quantize.embedding.weight.t()).argmax(-1)
    assert torch.equal(tokens, expected)
    # The patch-embedding conv output, flattened row by row, is what the encoder sees at position r*grid + c.
    conv = model.encoder.patch_embed.proj(images * 2 - 1)  # [B, D, 4, 4]
    torch.testing.assert_close(model.encoder.patch_embed(images * 2 - 1)[:, 1 * 4 + 2], conv[:, :, 1, 2])


def test_encode_changes_nothing_and_checks_range() -> None:
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.rand(1, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="float images"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_other_resolution_resizes_position_embeddings() -> None:
    model = _tiny()
    assert model.encode(torch.rand(1, 3, 48, 48)).shape == (1, 36)


def test_forward_losses_and_gradients() -> None:
    model = _tiny().train()
    images, target = torch.rand(2, 3, 32, 32), torch.randn(2, 16, 12)
    out = model(images, target)
    assert set(out) == {"loss", "rec_loss", "commit_loss", "tokens", "z"}
    assert 0.0 <= out["rec_loss"].item() <= 2.0
    torch.testing.assert_close(out["loss"], out["rec_loss"] + out["commit_loss"])
    out["loss"].backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # reaches the encoder through the codes
    assert model.encoder.blocks[0].attn.q_bias.grad is not None
    assert model.quantize.embedding.initted.item() == 1.0  # lazy k-means ran on the first training batch
    with pytest.raises(ValueError, match="teacher features"):
        model(images, torch.randn(2, 9, 12))


def test_no_weight_decay_names_exist() -> None:
    names = dict(_tiny().named_parameters())
    assert _tiny().no_weight_decay() <= set(names)
