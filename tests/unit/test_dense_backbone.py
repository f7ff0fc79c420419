"""Dense BEiT-3 features: block choice, positions at any size, pyramid shapes, strict loading, layer decay."""

import pytest
import torch

import beit3_core
from beit3_core.checkpoint import export_released_checkpoint
from evaluation.dense import DenseConfig, build_dense_backbone, default_out_indices
from evaluation.dense.features import block_feature_maps
from evaluation.finetune.weights import initialise
from evaluation.tasks import layer_decay_groups

# A 4-layer, 64-wide twin of the tiny model keeps every test well under a second.
SMALL = dict(embed_dim=64, num_heads=2, ffn_dim=128, num_layers=4, vocab_size=100)

PYRAMIDS = {
    "beit2": DenseConfig(),
    "vitdet": DenseConfig(pyramid="vitdet"),
    "vitdet_p6": DenseConfig(pyramid="vitdet", out_channels=32, extra_pool_level=True),
    "beit2_custom_blocks": DenseConfig(out_indices=(0, 0 + 1, 2, 3)),
    "vitdet_windows": DenseConfig(pyramid="vitdet", out_channels=32, window_size=3, global_blocks=(1,)),
}


def test_default_blocks_follow_the_reference():
    assert default_out_indices(12) == (3, 5, 7, 11)  # BEiT v2 base
    assert default_out_indices(24) == (7, 11, 15, 23)  # BEiT v2 large
    assert default_out_indices(4) == (0, 1, 2, 3)  # tiny: same fractions of the depth
    assert default_out_indices(2) == (0, 0, 0, 1)  # shallow: a block feeds several levels


@pytest.mark.parametrize("name", sorted(PYRAMIDS))
@pytest.mark.parametrize("size", [(64, 128), (128, 192), (192, 64)])
def test_pyramid_shapes_at_non_square_sizes(name, size):
    cfg = PYRAMIDS[name]
    model = build_dense_backbone("beit3_tiny", cfg, **SMALL).eval()
    height, width = size
    with torch.no_grad():
        levels = model(torch.randn(2, 3, height, width))
    width_c = 64 if cfg.pyramid == "beit2" else cfg.out_channels
    expected = {"p2": 4, "p3": 8, "p4": 16, "p5": 32} | ({"p6": 64} if cfg.extra_pool_level else {})
    assert model.strides == expected
    assert set(levels) == set(expected) and model.channels == dict.fromkeys(expected, width_c)
    for level, stride in expected.items():
        assert levels[level].shape == (2, width_c, height // stride, width // stride), level


def test_blocks_read_for_base_and_large_depths():
    for layers, blocks in ((12, (3, 5, 7, 11)), (24, (7, 11, 15, 23))):
        model = build_dense_backbone("beit3_tiny", DenseConfig(), **(SMALL | {"num_layers": layers}))
        assert model.out_indices == blocks
        vitdet = build_dense_backbone("beit3_tiny", DenseConfig(pyramid="vitdet"), **(SMALL | {"num_layers": layers}))
        assert vitdet.out_indices == (layers - 1,)


def test_features_at_the_pretraining_size_equal_the_backbone_forward():
    torch.manual_seed(0)
    model = build_dense_backbone("beit3_tiny", DenseConfig(pyramid="vitdet"), **SMALL).eval()
    image = torch.randn(2, 3, 224, 224)
    from evaluation.dense import block_feature_maps

    with torch.no_grad():
        (last,) = block_feature_maps(model.beit3, image, [3])
        reference = model.beit3(image=image)[:, 1:]  # [B, 196, D], no final norm
    assert torch.allclose(last.flatten(2).transpose(1, 2), reference, atol=1e-5)


def test_positions_are_resized_bicubically_to_the_input_grid():
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL)
    table = model.beit3.encoder.embed_positions.A.weight.detach()  # [3 + 14*14, D]
    from evaluation.dense import vision_positions

    same = vision_positions(model.beit3, 14, 14)[0]
    assert torch.equal(same, table[2:])
    # A constant grid stays constant under any bicubic resize: a check independent of the resize code.
    with torch.no_grad():
        model.beit3.encoder.embed_positions.A.weight[3:] = 0.25
    resized = vision_positions(model.beit3, 5, 9)[0]
    assert resized.shape == (1 + 45, 64)
    assert torch.allclose(resized[1:], torch.full((45, 64), 0.25), atol=1e-6)
    # One 1 at cell (7, 7) of the 14 x 14 grid, resized to 28 x 28. With align_corners=False output o reads source
    # o / 2 - 0.25, so outputs 14, 13, 12, 11 lie 0.25, 0.75, 1.25, 1.75 from source 7, weighted by Keys' cubic
    # (a = -0.75). Bilinear weights could never be negative.
    with torch.no_grad():
        model.beit3.encoder.embed_positions.A.weight[3:] = 0.0
        model.beit3.encoder.embed_positions.A.weight[3 + 7 * 14 + 7] = 1.0
    a = -0.75

    def keys(x):
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    up = vision_positions(model.beit3, 28, 28)[0][1:, 0].reshape(28, 28)
    for col, distance in ((14, 0.25), (13, 0.75), (12, 1.25), (11, 1.75)):
        assert up[14, col].item() == pytest.approx(keys(0.25) * keys(distance), abs=1e-6), col
    assert up[13, 13].item() == pytest.approx(keys(0.75) ** 2, abs=1e-6) and up[14, 12] < 0


def test_a_two_layer_model_reads_one_block_for_three_levels():
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **(SMALL | {"num_layers": 2})).eval()
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 64, 96))
    assert model.out_indices == (0, 0, 0, 1) and levels["p2"].shape == (1, 64, 16, 24)


def test_input_not_a_multiple_of_the_patch_size_is_an_error():
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 64, 70))


def test_released_weights_load_strictly_and_run_at_any_size(tmp_path):
    source = beit3_core.build_model("beit3_tiny", **SMALL)
    path = export_released_checkpoint(source, tmp_path / "released.pth")
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL)
    initialise(model, path)
    for key, value in source.state_dict().items():
        if not key.startswith("encoder.layer_norm"):  # dense features leave out the final norm
            assert torch.equal(model.beit3.state_dict()[key], value), key
    with torch.no_grad():
        levels = model.eval()(torch.randn(1, 3, 512, 320))
    assert levels["p4"].shape == (1, 64, 32, 20)


def test_beit2_pyramid_takes_the_blocks_in_order():
    # BEiT v2's pyramid: p4 is the third chosen block's map as it is, p5 the fourth's max-pooled 2 x 2; the blocks
    # of one model differ, so feeding them in another order shows.
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = model(image)
        maps = block_feature_maps(model.beit3, image, model.out_indices)
    torch.testing.assert_close(levels["p4"], maps[2])
    torch.testing.assert_close(levels["p5"], torch.nn.functional.max_pool2d(maps[3], 2))
    assert not torch.allclose(maps[2], maps[3])


def test_layer_decay_covers_blocks_and_puts_the_pyramid_on_top():
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL)
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.05)
    scale_of = {param: group["lr_scale"] for group in groups for param in group["params"]}
    num_layers = 4
    for index, layer in enumerate(model.beit3.encoder.layers):
        assert all(scale_of[p] == 0.5 ** (num_layers - index) for p in layer.parameters())
    assert all(scale_of[p] == 1.0 for p in model.pyramid.parameters())
    assert scale_of[model.beit3.vision_embed.proj.weight] == 0.5 ** (num_layers + 1)


def test_gradients_reach_the_backbone():
    model = build_dense_backbone("beit3_tiny", DenseConfig(), **SMALL).train()
    levels = model(torch.randn(2, 3, 64, 64))
    sum(level.square().mean() for level in levels.values()).backward()
    assert model.beit3.encoder.layers[0].ffn.A.fc1.weight.grad.abs().sum() > 0
    assert model.beit3.encoder.embed_positions.A.weight.grad.abs().sum() > 0
