"""Tests for beit3_core.data.views: view sampling, deterministic render replay and input normalization."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from beit3_core.data.views import (
    ViewParams,
    canonical_view,
    decode_stored_image,
    decode_stored_pil,
    encode_stored_image,
    render_view,
    render_views,
    resize_short_side,
    resize_short_side_image,
    sample_views,
    to_model_input,
    to_tokenizer_input,
)
from preprocessing.clean import stored_image_bytes
from preprocessing.validate_image import validate_image


def _photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: compresses like a photo, and every crop looks different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (height + width)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(256, 341), (341, 256), (256, 256), (256, 2000), (17, 1000)])
def test_views_lie_inside_the_image(size: tuple[int, int]) -> None:
    height, width = size
    views = sample_views(height, width, 32, np.random.default_rng(1))
    assert len(views) == 32
    for view in views:
        view.check_inside(height, width)
        assert isinstance(view.top, int) and isinstance(view.flip, bool)


def test_view_zero_is_the_centred_square() -> None:
    views = sample_views(256, 341, 4, np.random.default_rng(0))
    assert views[0] == ViewParams(top=0, left=42, height=256, width=256, flip=False)
    assert canonical_view(400, 256) == ViewParams(top=72, left=0, height=256, width=256, flip=False)
    without = sample_views(256, 341, 4, np.random.default_rng(0), canonical_first=False)
    assert without[0] != views[0]


def test_sampling_is_deterministic_under_a_seed() -> None:
    first = sample_views(256, 300, 16, np.random.default_rng(123))
    assert first == sample_views(256, 300, 16, np.random.default_rng(123))
    assert first != sample_views(256, 300, 16, np.random.default_rng(124))
    assert any(v.flip for v in first) and not all(v.flip for v in first[1:])


def test_disabling_flip_keeps_the_boxes() -> None:
    flipped = sample_views(256, 300, 16, np.random.default_rng(5))
    plain = sample_views(256, 300, 16, np.random.default_rng(5), allow_flip=False)
    assert not any(v.flip for v in plain)
    assert [(v.top, v.left, v.height, v.width) for v in plain] == [(v.top, v.left, v.height, v.width) for v in flipped]


def test_impossible_boxes_fall_back_to_a_centred_clamped_crop() -> None:
    # Every try needs a box taller than 10 px, so the torchvision fallback (ratio clamped to 4/3) is used.
    views = sample_views(10, 1000, 3, np.random.default_rng(0), canonical_first=False, allow_flip=False)
    assert set(views) == {ViewParams(top=0, left=493, height=10, width=13, flip=False)}


def test_random_views_respect_scale_and_ratio() -> None:
    height, width = 256, 256
    for view in sample_views(height, width, 200, np.random.default_rng(7), canonical_first=False):
        area = view.height * view.width / (height * width)
        assert 0.18 <= area <= 1.0
        assert 3 / 4 - 0.05 <= view.width / view.height <= 4 / 3 + 0.05


def test_render_shape_and_flip_is_a_mirror() -> None:
    image = _photo_like(256, 320)
    box = dict(top=10, left=30, height=200, width=180)
    plain = render_view(image, ViewParams(**box, flip=False), 224)
    mirrored = render_view(image, ViewParams(**box, flip=True), 224)
    assert plain.shape == (224, 224, 3) and plain.dtype == np.uint8 and plain.flags.c_contiguous
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])
    assert not np.array_equal(mirrored, plain)


def test_render_rejects_views_outside_the_image() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        render_view(_photo_like(64, 64), ViewParams(top=10, left=0, height=60, width=64, flip=False), 32)


def test_replay_on_the_decoded_stored_jpeg_is_bit_identical() -> None:
    stored = resize_short_side(_photo_like(300, 420))
    data = encode_stored_image(stored)
    assert data == encode_stored_image(stored)  # fixed encoder settings
    first, second = decode_stored_image(data), decode_stored_image(bytes(data))
    # JPEG is lossy: tokens computed on `stored` would not match what the loader decodes.
    assert not np.array_equal(first, stored)
    views = sample_views(*first.shape[:2], 8, np.random.default_rng(3))
    for view in views:
        np.testing.assert_array_equal(render_view(first, view, 224), render_view(second, view, 224))


@pytest.mark.parametrize(
    ("size", "expected"), [((300, 420), (256, 358)), ((420, 300), (358, 256)), ((64, 80), (256, 320))]
)
def test_resize_short_side(size: tuple[int, int], expected: tuple[int, int]) -> None:
    out = resize_short_side(_photo_like(*size))
    assert out.shape == (*expected, 3) and out.dtype == np.uint8
    assert resize_short_side(out) is out


def test_normalization_maps_to_minus_one_one_channels_first() -> None:
    batch = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    batch[0, 0, 0] = (255, 0, 128)
    model = to_model_input(batch)
    tokenizer = to_tokenizer_input(batch)
    assert model.shape == (2, 3, 4, 4) and model.dtype == torch.float32
    assert model[0, :, 0, 0].tolist() == [1.0, -1.0, pytest.approx(128 / 255 * 2 - 1, abs=1e-6)]
    assert model.min() == -1 and tokenizer.max() == 1
    # Same float ops as the VQ-KD input scaling (x * 2 - 1 on [0, 1]).
    assert torch.equal(model, tokenizer * 2 - 1)
    assert to_model_input(batch[0]).shape == (1, 3, 4, 4)
    assert torch.equal(to_model_input(torch.from_numpy(batch)), model)


def test_normalization_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((4, 4, 3), dtype=np.float32))


# The single-decode CPU path (PIL images end to end) gives the pixels and bytes of the array path.


@pytest.mark.parametrize("size", [(40, 48), (37, 91), (300, 256), (256, 256)])
def test_resizing_a_pil_image_equals_resizing_its_array(size: tuple[int, int]) -> None:
    pixels = _photo_like(*size)
    expected = resize_short_side(pixels, 56)
    assert np.array_equal(np.asarray(resize_short_side_image(Image.fromarray(pixels), 56)), expected)


def test_encoding_a_pil_image_ignores_its_metadata() -> None:
    pixels = _photo_like(45, 60)
    image = Image.fromarray(pixels)
    image.info = {"comment": b"from the source file", "dpi": (300, 300)}
    assert encode_stored_image(image) == encode_stored_image(pixels)
    with pytest.raises(ValueError, match="RGB"):
        encode_stored_image(image.convert("L"))


def test_decoded_image_and_array_hold_the_same_photo_like() -> None:
    data = encode_stored_image(_photo_like(64, 80))
    assert np.array_equal(np.asarray(decode_stored_pil(data)), decode_stored_image(data))


def test_views_rendered_together_equal_views_rendered_one_by_one() -> None:
    data = encode_stored_image(_photo_like(56, 83))
    array, image = decode_stored_image(data), decode_stored_pil(data)
    views = sample_views(56, 83, 6, np.random.default_rng(3)) + [ViewParams(5, 7, 20, 30, True)]
    together = render_views(image, views, 32)
    assert together.shape == (len(views), 32, 32, 3) and together.dtype == np.uint8
    for k, view in enumerate(views):
        assert np.array_equal(together[k], render_view(array, view, 32)), k
    assert np.array_equal(render_views(array, views, 32), together)


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80, **options)
    return buffer.getvalue()


def test_source_jpeg_is_reused_only_when_asked_and_already_stored_size() -> None:
    at_size, larger = _jpeg(_photo_like(40, 52)), _jpeg(_photo_like(60, 52))
    png = io.BytesIO()
    Image.fromarray(_photo_like(40, 52)).save(png, format="PNG")
    for data in (at_size, larger, png.getvalue()):
        result = validate_image(data)
        reencoded = encode_stored_image(resize_short_side(result.to_array(), 40))
        assert stored_image_bytes(data, result, 40) == reencoded
        reused = stored_image_bytes(data, result, 40, reuse_jpeg=True)
        assert reused == (data if data is at_size else reencoded)
    # A grey JPEG of the stored size is normalised to RGB on validation, so it is re-encoded.
    grey = _jpeg(_photo_like(40, 52)[..., 0].copy())
    result = validate_image(grey)
    assert stored_image_bytes(grey, result, 40, reuse_jpeg=True) != grey
