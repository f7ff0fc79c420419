"""The single-decode CPU path gives the pixels and bytes of the array path it replaces.

Each PIL-level function is checked against the numpy-array function the pretraining loader uses, on images
with odd sizes, flips and metadata in `info`, so the shards stay byte-identical and the replay exact.
"""

import io

import numpy as np
import pytest
from PIL import Image

from beit3_core.data.views import (
    ViewParams,
    decode_stored_image,
    decode_stored_pil,
    encode_stored_image,
    render_view,
    render_views,
    resize_short_side,
    resize_short_side_image,
    sample_views,
)
from preprocessing.clean import stored_image_bytes
from preprocessing.validate_image import validate_image


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    # Smooth gradients plus noise: bicubic overshoot and JPEG rounding both show up.
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(40, 48), (37, 91), (300, 256), (256, 256)])
def test_resizing_a_pil_image_equals_resizing_its_array(size: tuple[int, int]) -> None:
    pixels = _pixels(*size)
    expected = resize_short_side(pixels, 56)
    assert np.array_equal(np.asarray(resize_short_side_image(Image.fromarray(pixels), 56)), expected)


def test_encoding_a_pil_image_ignores_its_metadata() -> None:
    pixels = _pixels(45, 60)
    image = Image.fromarray(pixels)
    image.info = {"comment": b"from the source file", "dpi": (300, 300)}
    assert encode_stored_image(image) == encode_stored_image(pixels)
    with pytest.raises(ValueError, match="RGB"):
        encode_stored_image(image.convert("L"))


def test_decoded_image_and_array_hold_the_same_pixels() -> None:
    data = encode_stored_image(_pixels(64, 80))
    assert np.array_equal(np.asarray(decode_stored_pil(data)), decode_stored_image(data))


def test_views_rendered_together_equal_views_rendered_one_by_one() -> None:
    data = encode_stored_image(_pixels(56, 83))
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
    at_size, larger = _jpeg(_pixels(40, 52)), _jpeg(_pixels(60, 52))
    png = io.BytesIO()
    Image.fromarray(_pixels(40, 52)).save(png, format="PNG")
    for data in (at_size, larger, png.getvalue()):
        result = validate_image(data)
        reencoded = encode_stored_image(resize_short_side(result.to_array(), 40))
        assert stored_image_bytes(data, result, 40) == reencoded
        reused = stored_image_bytes(data, result, 40, reuse_jpeg=True)
        assert reused == (data if data is at_size else reencoded)
    # A grey JPEG of the stored size is normalised to RGB on validation, so it is re-encoded.
    grey = _jpeg(_pixels(40, 52)[..., 0].copy())
    result = validate_image(grey)
    assert stored_image_bytes(grey, result, 40, reuse_jpeg=True) != grey
