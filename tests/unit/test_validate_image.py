"""Tests for preprocessing.validate_image on small files generated with Pillow."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from preprocessing.validate_image import ImageReason, ImageRules, image_sha256, validate_image

Save = Callable[..., bytes]


@pytest.fixture
def save(tmp_path: Path) -> Save:
    """Saves a Pillow image into tmp_path and returns the file's bytes."""

    def _save(image: Image.Image, name: str, **kwargs: object) -> bytes:
        path = tmp_path / name
        image.save(path, **kwargs)
        return path.read_bytes()

    return _save


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG declaring `width` x `height` with a few bytes of pixel data: decoding it would fail
    or need the full size in memory, so a `too_large` verdict proves the header was checked first."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_good_images_are_accepted_unchanged(save: Save, fmt: str) -> None:
    pixels = _noise(48, 64)
    data = save(Image.fromarray(pixels), f"good.{fmt.lower()}", format=fmt, quality=95)
    result = validate_image(data)
    assert result.accepted, result.message
    assert result.normalizations == ()
    assert result.image is not None and result.image.mode == "RGB" and result.image.size == (64, 48)
    array = result.to_array()
    assert array.shape == (48, 64, 3) and array.dtype == np.uint8
    if fmt == "PNG":
        np.testing.assert_array_equal(array, pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_rejected(save: Save, fmt: str) -> None:
    data = save(Image.fromarray(_noise(64, 64)), f"cut.{fmt.lower()}", format=fmt)
    result = validate_image(data[: len(data) // 2])
    assert result.reason == ImageReason.TRUNCATED, result.message
    assert result.image is None
    with pytest.raises(ValueError, match="truncated"):
        result.to_array()


def test_random_and_empty_bytes_are_rejected() -> None:
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert validate_image(noise).reason == ImageReason.DECODE_ERROR
    assert validate_image(b"").reason == ImageReason.EMPTY


def test_refuses_to_run_when_truncated_loading_is_enabled(save: Save, monkeypatch: pytest.MonkeyPatch) -> None:
    data = save(Image.fromarray(_noise(32, 32)), "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_image(data)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((16, 16), None),
        ((15, 40), ImageReason.TOO_SMALL),
        ((8, 8), ImageReason.TOO_SMALL),
        ((96, 16), None),
        ((97, 16), ImageReason.BAD_ASPECT),
        ((20, 200), ImageReason.BAD_ASPECT),
    ],
)
def test_geometry_rules(save: Save, size: tuple[int, int], reason: ImageReason | None) -> None:
    data = save(Image.new("RGB", size, (10, 20, 30)), "geometry.png")
    result = validate_image(data, ImageRules(min_side=16, max_aspect=6.0))
    assert result.reason == reason, result.message


def test_bomb_beyond_pillow_limit_is_too_large() -> None:
    # 1e10 pixels: Pillow itself raises DecompressionBombError while opening (above 2 x MAX_IMAGE_PIXELS).
    result = validate_image(_png_header_only(100_000, 100_000))
    assert result.reason == ImageReason.TOO_LARGE, result.message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_between_limits_is_rejected_from_the_header() -> None:
    # 1e8 pixels: above our default max_pixels, below Pillow's hard limit, so only our header check stops it.
    result = validate_image(_png_header_only(10_000, 10_000))
    assert result.reason == ImageReason.TOO_LARGE, result.message
    assert "max_pixels" in result.message


def test_compressible_large_png_respects_custom_max_pixels(save: Save) -> None:
    data = save(Image.new("1", (400, 300), 1), "flat.png")
    assert len(data) < 2000
    assert validate_image(data).accepted
    assert validate_image(data, ImageRules(max_pixels=400 * 300)).accepted
    result = validate_image(data, ImageRules(max_pixels=400 * 300 - 1))
    assert result.reason == ImageReason.TOO_LARGE
    # The same declared size with almost no pixel data: rejected as too large, never decoded.
    assert validate_image(_png_header_only(400, 300), ImageRules(max_pixels=1000)).reason == ImageReason.TOO_LARGE


def test_exif_orientation_6_is_applied(save: Save) -> None:
    stored = np.full((24, 40, 3), 255, dtype=np.uint8)  # stored 40 wide x 24 tall
    stored[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = save(Image.fromarray(stored), "rotated.jpg", quality=95, exif=exif)
    result = validate_image(data)
    assert result.accepted and result.normalizations == ("exif_transpose",)
    array = result.to_array()
    assert array.shape == (40, 24, 3)
    # The stored top-left corner is displayed at the top-right.
    np.testing.assert_allclose(array[4, 20], (255, 0, 0), atol=40)
    np.testing.assert_allclose(array[4, 3], (255, 255, 255), atol=40)
    np.testing.assert_allclose(array[36, 3], (255, 255, 255), atol=40)


def test_cmyk_jpeg_is_converted(save: Save) -> None:
    data = save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "cmyk.jpg", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    result = validate_image(data)
    assert result.accepted and result.normalizations == ("cmyk->rgb",)
    np.testing.assert_allclose(result.to_array()[16, 16], (255, 0, 0), atol=10)


def test_palette_with_transparency_is_composited_on_white(save: Save) -> None:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (3 * 254))  # index 0 black, index 1 blue
    image.paste(1, (16, 0, 32, 32))
    data = save(image, "palette.png", transparency=0)
    result = validate_image(data)
    assert result.accepted and result.normalizations == ("palette->rgb", "alpha_on_white")
    array = result.to_array()
    assert tuple(array[5, 5]) == (255, 255, 255)  # transparent black became white
    assert tuple(array[5, 25]) == (0, 0, 255)


def test_palette_without_transparency(save: Save) -> None:
    data = save(Image.new("RGB", (32, 32), (200, 10, 10)).quantize(4), "palette_opaque.png")
    result = validate_image(data)
    assert result.accepted and result.normalizations == ("palette->rgb",)
    assert tuple(result.to_array()[0, 0]) == (200, 10, 10)


def test_rgba_alpha_is_composited_on_white(save: Save) -> None:
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 0)  # fully transparent red
    rgba[:, 16:32] = (0, 0, 0, 128)  # half transparent black
    rgba[:, 32:] = (0, 200, 0, 255)  # opaque green
    result = validate_image(save(Image.fromarray(rgba), "rgba.png"))
    assert result.accepted and result.normalizations == ("alpha_on_white",)
    array = result.to_array().astype(int)
    assert tuple(array[0, 0]) == (255, 255, 255)
    np.testing.assert_allclose(array[0, 20], (127, 127, 127), atol=1)
    assert tuple(array[0, 40]) == (0, 200, 0)


def test_16bit_png_is_scaled_to_8bit(save: Save) -> None:
    values = np.zeros((32, 32), dtype=np.uint16)
    values[0, 1], values[0, 2], values[0, 3] = 257 * 100, 65535, 300
    data = save(Image.fromarray(values), "deep.png")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    result = validate_image(data)
    assert result.accepted and result.normalizations == ("16bit->8bit", "gray->rgb")
    array = result.to_array()
    assert [int(v) for v in array[0, :4, 0]] == [0, 100, 255, 1]
    assert (array[..., 0] == array[..., 2]).all()


@pytest.mark.parametrize(
    ("mode", "color", "notes", "expected"),
    [
        ("L", 77, ("gray->rgb",), (77, 77, 77)),
        ("1", 1, ("1bit->rgb",), (255, 255, 255)),
        ("LA", (0, 0), ("gray->rgb", "alpha_on_white"), (255, 255, 255)),
    ],
)
def test_other_modes(save: Save, mode: str, color: object, notes: tuple[str, ...], expected: tuple) -> None:
    result = validate_image(save(Image.new(mode, (20, 20), color), f"mode_{mode}.png"))
    assert result.accepted and result.normalizations == notes
    assert tuple(result.to_array()[3, 3]) == expected


def test_animated_gif_keeps_first_frame(save: Save) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "anim.gif", save_all=True, append_images=frames[1:])
    result = validate_image(data)
    assert result.accepted and result.normalizations[0] == "first_frame"
    np.testing.assert_allclose(result.to_array()[10, 10], (255, 0, 0), atol=8)


def test_image_sha256_hashes_the_encoded_bytes() -> None:
    assert image_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_sha256(b"\x89PNG") == hashlib.sha256(b"\x89PNG").hexdigest() != image_sha256(b"\x89PNH")


def test_rules_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="min_side"):
        ImageRules(min_side=0)
    with pytest.raises(ValueError, match="max_aspect"):
        ImageRules(max_aspect=0.5)
    with pytest.raises(ValueError, match="max_pixels"):
        ImageRules(min_side=100, max_pixels=99)
