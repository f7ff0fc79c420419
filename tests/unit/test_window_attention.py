"""ViTDet window attention in the dense backbone: partitioning, equality with a block-diagonal global mask, the
global blocks, drop path per image, unchanged parameters."""

import pytest
import torch

import beit3_core
from beit3_core.layers.multiway import VISION
from beit3_core.layers.window import WindowPartition
from evaluation.dense import DenseConfig, block_feature_maps, build_dense_backbone
from evaluation.dense.detection import DetectorConfig, MaskRCNN

SMALL = dict(embed_dim=64, num_heads=2, ffn_dim=128, num_layers=4, vocab_size=100)


def _window_ids(grid_h: int, grid_w: int, window: int) -> torch.Tensor:
    """Window index of every token of a row-major h x w grid, computed token by token."""
    cols = -(-grid_w // window)
    return torch.tensor([(r // window) * cols + c // window for r in range(grid_h) for c in range(grid_w)])


def test_partition_puts_each_token_in_its_window_and_back():
    grid_h, grid_w, window = 5, 7, 3  # padded to 6 x 9: 2 x 3 windows
    parts = WindowPartition(grid_h, grid_w, window)
    tokens = torch.arange(2 * grid_h * grid_w, dtype=torch.float32).view(2, grid_h * grid_w, 1)
    windows = parts.split(tokens)
    assert windows.shape == (2 * 6, 9, 1)
    ids = _window_ids(grid_h, grid_w, window)
    for image in range(2):
        for k in range(6):
            expected = tokens[image, ids == k, 0]
            real = windows[image * 6 + k, :, 0][parts.attention_mask(2)[image * 6 + k, 0, 0]]
            assert torch.equal(real, expected)  # row-major within the window, padding left out
    assert torch.equal(parts.merge(windows), tokens)
    assert WindowPartition(6, 9, 3).attention_mask(2) is None  # no padding, no mask


def test_windowed_layer_equals_global_attention_with_a_block_diagonal_mask():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL).eval()
    layer = model.encoder.layers[0]
    grid_h, grid_w, window = 5, 7, 3
    x = torch.randn(2, grid_h * grid_w, 64)
    ids = _window_ids(grid_h, grid_w, window)
    allowed = ids[:, None] == ids[None, :]  # [N, N]: a token sees its own window only
    with torch.no_grad():
        windowed = layer([x], [VISION], [VISION], None, WindowPartition(grid_h, grid_w, window))[0]
        reference = layer([x], [VISION], [VISION], allowed)[0]
        plain = layer([x], [VISION], [VISION], None)[0]
    torch.testing.assert_close(windowed, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(windowed, plain, atol=1e-3)  # the windows do restrict attention


def test_one_window_over_the_whole_grid_is_global_attention_without_cls():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL | {"normalize_output": False}).eval()
    image = torch.randn(2, 3, 80, 112)  # a 5 x 7 grid; one 8 x 8 window, padded
    with torch.no_grad():
        (windowed,) = block_feature_maps(model, image, [3], window_size=8, global_blocks=())
        (global_no_cls,) = block_feature_maps(model, image, [3], window_size=8, global_blocks=range(4))
        (with_cls,) = block_feature_maps(model, image, [3])
    assert windowed.shape == with_cls.shape == (2, 64, 5, 7)
    torch.testing.assert_close(windowed, global_no_cls, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(windowed, with_cls, atol=1e-3)  # ViTDet drops the class token


def test_global_blocks_attend_globally_and_the_others_within_windows():
    torch.manual_seed(0)
    model = beit3_core.build_model("beit3_tiny", **SMALL | {"normalize_output": False}).eval()
    image = torch.randn(1, 3, 96, 96)  # 6 x 6 grid, 3 x 3 windows
    # Perturb one patch of the top-left window: after windowed blocks only, the bottom-right window cannot see it.
    changed = image.clone()
    changed[:, :, :16, :16] += 1.0
    with torch.no_grad():
        maps = [block_feature_maps(model, x, [3], window_size=3, global_blocks=()) for x in (image, changed)]
        mixed = [block_feature_maps(model, x, [3], window_size=3, global_blocks=(1,)) for x in (image, changed)]
    assert torch.equal(maps[0][0][..., 3:, 3:], maps[1][0][..., 3:, 3:])
    assert not torch.allclose(mixed[0][0][..., 3:, 3:], mixed[1][0][..., 3:, 3:])


def test_drop_path_draws_per_image_not_per_window():
    config = SMALL | {"drop_path_rate": 0.9}
    model = beit3_core.build_model("beit3_tiny", **config).train()
    layer = model.encoder.layers[-1]
    grid_h, grid_w, window = 6, 6, 3
    x = torch.randn(4, grid_h * grid_w, 64)
    ids = _window_ids(grid_h, grid_w, window)
    allowed = ids[:, None] == ids[None, :]
    torch.manual_seed(1)
    windowed = layer([x], [VISION], [VISION], None, WindowPartition(grid_h, grid_w, window))[0]
    torch.manual_seed(1)
    reference = layer([x], [VISION], [VISION], allowed)[0]
    torch.testing.assert_close(windowed, reference, atol=1e-5, rtol=1e-5)


def test_dense_config_global_blocks_and_errors():
    assert DenseConfig(window_size=14).resolved_global_blocks(12) == (2, 5, 8, 11)  # ViTDet base
    assert DenseConfig(window_size=14).resolved_global_blocks(24) == (5, 11, 17, 23)  # ViTDet large
    assert DenseConfig().resolved_global_blocks(4) == (0, 1, 2, 3)  # no windows: all global
    assert DenseConfig(window_size=7, global_blocks=[3, 1, 1]).global_blocks == (1, 3)
    with pytest.raises(ValueError, match="window_size must be >= 0"):
        DenseConfig(window_size=-1)
    with pytest.raises(ValueError, match="global_blocks needs window_size"):
        DenseConfig(global_blocks=(1,))
    with pytest.raises(ValueError, match=r"global_blocks \[7\] must lie in \[0, 4\)"):
        build_dense_backbone("beit3_tiny", DenseConfig(window_size=7, global_blocks=(7,)), **SMALL)


def test_windows_add_no_parameters_and_the_detector_defaults_to_vitdet():
    plain = build_dense_backbone("beit3_tiny", DenseConfig(pyramid="vitdet"), **SMALL)
    windowed = build_dense_backbone("beit3_tiny", DenseConfig(pyramid="vitdet", window_size=14), **SMALL)
    assert plain.state_dict().keys() == windowed.state_dict().keys()
    assert DetectorConfig().window_size == 14
    beit3 = beit3_core.build_model("beit3_tiny", **SMALL | {"num_layers": 12, "normalize_output": False})
    detector = MaskRCNN(beit3, DetectorConfig(num_classes=3, out_channels=32))
    assert detector.dense.window_size == 14 and detector.global_blocks == (2, 5, 8, 11)
