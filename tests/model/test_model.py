import pytest
import torch
from support.model_inputs import SMALL, make_inputs

import beit3_core
from beit3_core.layers.multiway import Multiway


@pytest.mark.parametrize("name", ["beit3_tiny", "beit3_base_patch16_224"])
def test_shapes_on_cpu(name):
    model = beit3_core.build_model(name).eval()
    config = model.config
    image, text, padding, image_mask = make_inputs(config, batch_size=1, text_len=5)
    with torch.no_grad():
        assert model(image=image).shape == (1, 1 + config.num_patches, config.embed_dim)
        assert model(text=text, text_padding_mask=padding).shape == (1, 5, config.embed_dim)
        pair = model(image=image, text=text, text_padding_mask=padding, image_mask=image_mask)
        assert pair.shape == (1, 1 + config.num_patches + 5, config.embed_dim)


@pytest.mark.parametrize(
    "name, num_patches, num_params",
    [
        ("beit3_large_patch16_224", 196, 672_702_464),  # the released backbone's exact count
        ("beit3_giant_patch14_224", 256, None),
    ],
)
def test_shapes_on_meta(name, num_patches, num_params):
    with torch.device("meta"):
        model = beit3_core.build_model(name)
        config = model.config
        out = model(image=torch.empty(2, 3, 224, 224), text=torch.zeros(2, 9, dtype=torch.long))
    assert out.shape == (2, 1 + num_patches + 9, config.embed_dim)
    if num_params is not None:
        assert sum(p.numel() for p in model.parameters()) == num_params


def test_base_matches_released_parameter_count():
    with torch.device("meta"):
        model = beit3_core.build_model("beit3_base_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == 220_987_392
    assert len(model.state_dict()) == 7 + 40 * 12 + 4  # 491 keys, as the released base checkpoint


def test_giant_is_the_papers_architecture():
    with torch.device("meta"):
        giant = beit3_core.build_model("beit3_giant_patch14_224")
    c = giant.config
    assert (c.num_layers, c.embed_dim, c.ffn_dim, c.num_heads, c.patch_size) == (40, 1408, 6144, 16, 14)
    assert not isinstance(giant.encoder.layers[0].self_attn.q_proj, Multiway)  # shared attention
    vl_layers = [i for i, layer in enumerate(giant.encoder.layers) if layer.has_vl_expert]
    assert vl_layers == [37, 38, 39]


def test_paper_variant_routes_pairs_through_the_vl_expert():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL, attn_sharing="shared", vl_ffn_layers=1, norm="preln")
    image, text, padding, _ = make_inputs(model.config)
    top = model.encoder.layers[-1]

    model(image=image, text=text, text_padding_mask=padding).sum().backward()
    assert top.ffn.C.fc1.weight.grad is not None and top.ffn.C.fc1.weight.grad.abs().sum() > 0
    assert top.ffn.A.fc1.weight.grad is None and top.ffn.B.fc1.weight.grad is None
    # Below the VL layers, pair tokens still use their modality experts.
    assert model.encoder.layers[0].ffn.A.fc1.weight.grad is not None

    model.zero_grad(set_to_none=True)
    model(image=image).sum().backward()  # images alone keep the vision expert in every layer
    assert top.ffn.A.fc1.weight.grad is not None and top.ffn.C.fc1.weight.grad is None


def test_padding_does_not_change_real_tokens(small_model):
    image, text, _, _ = make_inputs(small_model.config, text_len=5)
    pad_ids = torch.full((text.shape[0], 3), 1)
    padded = torch.cat([text, pad_ids], dim=1)
    padding = torch.zeros_like(padded, dtype=torch.bool)
    padding[:, 5:] = True
    with torch.no_grad():
        plain = small_model(image=image, text=text)
        with_pads = small_model(image=image, text=padded, text_padding_mask=padding)
    torch.testing.assert_close(with_pads[:, : plain.shape[1]], plain, atol=1e-5, rtol=0)


def test_causal_text_mask_hides_later_tokens(small_model):
    config = small_model.config
    image, text, _, _ = make_inputs(config, text_len=6)
    split = 1 + config.num_patches
    n = split + text.shape[1]
    blocked = torch.zeros(n, n, dtype=torch.bool)
    blocked[:split, split:] = True  # image rows never see text
    blocked[split:, split:] = torch.ones(6, 6, dtype=torch.bool).triu(1)  # text row j sees text 0..j
    changed = text.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % config.vocab_size
    with torch.no_grad():
        a = small_model(image=image, text=text, attn_mask=blocked)
        b = small_model(image=image, text=changed, attn_mask=blocked)
        c = small_model(image=image, text=changed)
    torch.testing.assert_close(a[:, : split + 4], b[:, : split + 4], atol=1e-6, rtol=0)
    assert (a[:, split + 4 :] - b[:, split + 4 :]).abs().max() > 1e-3
    assert (a[:, :split] - c[:, :split]).abs().max() > 1e-3  # without the mask, the image does see the text


def test_image_mask_replaces_patches_with_the_mask_token(small_model):
    image, _, _, _ = make_inputs(small_model.config)
    all_masked = torch.ones(image.shape[0], small_model.num_patches, dtype=torch.bool)
    with torch.no_grad():
        a = small_model(image=image, image_mask=all_masked)
        b = small_model(image=torch.randn_like(image), image_mask=all_masked)
        c = small_model(image=image)
    torch.testing.assert_close(a, b)  # fully masked images carry no pixel information
    assert (a - c).abs().max() > 1e-3


def test_drop_path_is_random_in_training_only():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL, drop_path_rate=0.5)
    image, _, _, _ = make_inputs(model.config, batch_size=8)
    model.train()
    assert (model(image=image) - model(image=image)).abs().max() > 1e-4
    model.eval()
    torch.testing.assert_close(model(image=image), model(image=image))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL).train()
    image, text, padding, image_mask = make_inputs(model.config)

    def grads():
        model.zero_grad(set_to_none=True)
        model(image=image, text=text, text_padding_mask=padding, image_mask=image_mask).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_no_weight_decay_is_declared_by_module_type(small_model):
    exempt = small_model.no_weight_decay_parameters()
    assert "text_embed.weight" in exempt
    assert {"vision_embed.cls_token", "vision_embed.mask_token"} <= exempt
    assert {"encoder.embed_positions.A.weight", "encoder.embed_positions.B.weight"} <= exempt
    assert "encoder.layers.0.self_attn.q_proj.A.bias" in exempt
    assert "encoder.layers.1.ffn.B.ffn_layernorm.weight" in exempt
    assert "encoder.layers.0.self_attn.q_proj.A.weight" not in exempt
    assert "encoder.layers.0.ffn.A.fc1.weight" not in exempt
    assert "vision_embed.proj.weight" not in exempt


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=torch.randn(1, 3, 48, 48)), "expects 32x32"),
        (dict(image=torch.randn(1, 32, 32)), "must be \\[B, 3, H, W\\]"),
        (dict(text=torch.zeros(1, 1023, dtype=torch.long)), "position table holds at most 1022"),
        (dict(text=torch.full((1, 4), 100)), "vocab_size=100"),
        (dict(text=torch.zeros(1, 4), text_padding_mask=None), "integer token ids"),
        (dict(image=torch.randn(2, 3, 32, 32), image_mask=torch.zeros(2, 5, dtype=torch.bool)), "image_mask must be"),
        (dict(image=torch.randn(2, 3, 32, 32), image_mask=torch.zeros(2, 4)), "must be bool"),
        (
            dict(text=torch.zeros(2, 4, dtype=torch.long), text_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
            "text_padding_mask shape",
        ),
        (dict(text=torch.zeros(2, 4, dtype=torch.long), attn_mask=torch.zeros(3, 3)), "attn_mask must be"),
        (dict(image_mask=torch.zeros(2, 4, dtype=torch.bool), text=torch.zeros(2, 3, dtype=torch.long)), "without"),
        ({}, "needs an image, a text, or both"),
    ],
)
def test_bad_input_names_the_problem(small_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        beit3_core.build_model("beit3_tiny", num_heads=5)
    with pytest.raises(ValueError, match="unknown BEiT3Config fields"):
        beit3_core.build_model("beit3_tiny", hidden=3)
    with pytest.raises(KeyError, match="beit3_tiny"):
        beit3_core.build_model("beit3_huge")


def test_embedding_init_scales_are_configurable():
    torch.manual_seed(0)
    release = beit3_core.build_model("beit3_tiny", vocab_size=2000)
    scratch = beit3_core.build_model("beit3_tiny", vocab_size=2000, text_embed_init_std=1.0, pos_init_std=0.5)
    assert release.text_embed.weight.std().item() == pytest.approx(192**-0.5, rel=0.02)
    assert release.encoder.embed_positions.B.weight.std().item() == pytest.approx(1.0, rel=0.02)
    assert scratch.text_embed.weight.std().item() == pytest.approx(1.0, rel=0.02)
    assert scratch.encoder.embed_positions.A.weight.std().item() == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="text_embed_init_std must be positive"):
        beit3_core.build_model("beit3_tiny", text_embed_init_std=0.0)
