"""Validate and normalise one encoded image before it enters the pretraining shards.

BEiT-3 pretraining (Wang et al., 2022, "Image as a Foreign Language", arXiv:2208.10442) and its VQ-KD
tokenizer (BEiT v2, arXiv:2208.06366) consume 8-bit RGB images. Web and package data arrive in every mode
Pillow knows, so this module turns one file's bytes into either an accepted RGB image or a rejection with a
machine-readable reason. Behaviour follows the Pillow documentation for `Image.open` (lazy header read,
`DecompressionBombError`), `ImageFile.LOAD_TRUNCATED_IMAGES` and `ImageOps.exif_transpose`.

Rejection reasons (`ImageReason`): `empty`, `decode_error`, `truncated`, `too_small`, `too_large`,
`bad_aspect`, `unsupported_mode`.

Normalisations recorded on accepted images, in the order they are applied:
    `first_frame`   animated file (GIF/APNG/WebP): only frame 0 is kept.
    `exif_transpose` EXIF orientation 2-8 applied, so stored pixels are upright.
    `16bit->8bit`   16-bit grayscale (modes I;16*, I) rescaled to 0-255.
    `1bit->rgb`     bilevel image expanded to RGB.
    `cmyk->rgb`     CMYK (print JPEGs) converted with Pillow's conversion.
    `ycbcr->rgb`    YCbCr converted to RGB.
    `palette->rgb`  palette image expanded to RGB.
    `alpha_on_white` alpha (RGBA, LA, PA, palette or colour-key transparency) composited on white.
    `gray->rgb`     single-channel image replicated to three channels.

Transparent pixels are composited on white, not black and not dropped: the packaged image-text sets (Tux
Paint stamps, openclipart) are cut-out objects whose transparent pixels often hold black or arbitrary RGB
values; white matches how they are displayed and described by their captions.

Nothing here changes Pillow's process-wide settings: `Image.MAX_IMAGE_PIXELS` stays as set (Pillow itself
raises above twice that value), and `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False; validation refuses to
run otherwise because truncated files would then decode as grey-padded images.
"""

from __future__ import annotations

import enum
import hashlib
import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["ImageReason", "ImageResult", "ImageRules", "image_sha256", "validate_image"]

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


class ImageReason(enum.StrEnum):
    """Machine-readable rejection reasons (stored as plain strings in the quarantine table)."""

    EMPTY = "empty"
    DECODE_ERROR = "decode_error"
    TRUNCATED = "truncated"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    BAD_ASPECT = "bad_aspect"
    UNSUPPORTED_MODE = "unsupported_mode"


@dataclass(kw_only=True, frozen=True)
class ImageRules:
    """Acceptance limits, all checked on the header before any pixel is decoded."""

    min_side: int = 16
    """Shortest side in pixels; below one 16 px patch an image carries no usable token."""
    max_pixels: int = 89_478_485
    """Width x height above which a file is treated as a decompression bomb (Pillow's own default). Pillow
    independently warns above `PIL.Image.MAX_IMAGE_PIXELS` and raises above twice it (reported here as
    `too_large` too), so a larger value only helps if the caller also raises Pillow's limit."""
    max_aspect: float = 6.0
    """Longest / shortest side. Above 20/3 no RandomResizedCrop box with scale >= 0.2 and ratio <= 4/3 fits,
    so every augmented view would be the centre-crop fallback of a thin strip; 6 keeps a small margin."""

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_pixels < self.min_side**2:
            raise ValueError(f"max_pixels={self.max_pixels} is below min_side**2={self.min_side**2}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1.0, got {self.max_aspect}")


@dataclass(frozen=True)
class ImageResult:
    """Outcome of `validate_image`: an accepted RGB image, or a rejection reason.

    Attributes:
        image: The upright 8-bit RGB image when accepted, else None.
        normalizations: Conversions applied to an accepted image, in order (see the module docstring).
        reason: Rejection reason when rejected, else None.
        message: Human-readable detail for a rejection; empty when accepted.
    """

    image: Image.Image | None
    normalizations: tuple[str, ...] = ()
    reason: ImageReason | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        """True when the image passed every rule."""
        return self.reason is None

    def to_array(self) -> np.ndarray:
        """Returns the accepted image as a uint8 array of shape (H, W, 3)."""
        if self.image is None:
            raise ValueError(f"rejected image has no pixels ({self.reason}: {self.message})")
        return np.asarray(self.image, dtype=np.uint8)


def image_sha256(data: bytes) -> str:
    """Hex sha256 of the encoded file bytes, the image identity used in shards and for deduplication."""
    return hashlib.sha256(data).hexdigest()


def _reject(reason: ImageReason, message: str) -> ImageResult:
    return ImageResult(image=None, reason=reason, message=message)


def _riff_is_short(data: bytes) -> bool:
    # Pillow builds its WebP decoder inside Image.open and reports a cut-off file only as "could not create
    # decoder object"; the RIFF header states the full length, so compare it to tell truncation apart from
    # corruption.
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    (riff_size,) = struct.unpack("<I", data[4:8])
    return len(data) < riff_size + 8


def _check_geometry(width: int, height: int, rules: ImageRules) -> ImageResult | None:
    if width * height > rules.max_pixels:
        return _reject(ImageReason.TOO_LARGE, f"{width}x{height} exceeds max_pixels={rules.max_pixels}")
    if min(width, height) < rules.min_side:
        return _reject(ImageReason.TOO_SMALL, f"{width}x{height} has a side below min_side={rules.min_side}")
    aspect = max(width, height) / min(width, height)
    if aspect > rules.max_aspect:
        return _reject(ImageReason.BAD_ASPECT, f"{width}x{height} aspect {aspect:.2f} > {rules.max_aspect}")
    return None


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, struct.error):
        # A damaged EXIF block says nothing reliable about orientation; the pixels themselves decoded fine.
        return image
    if orientation not in range(2, 9):
        return image
    notes.append("exif_transpose")
    return ImageOps.exif_transpose(image)


def _sixteen_to_eight_bit(image: Image.Image) -> Image.Image:
    # PNG and TIFF 16-bit grayscale decode to I;16 variants or to 32-bit I holding 0..65535.
    values = np.asarray(image).astype(np.int64)
    values = np.clip(values, 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image | None:
    """Converts any supported mode to 8-bit RGB, recording each step; None for unsupported modes."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        notes.append("16bit->8bit")
        image, mode = _sixteen_to_eight_bit(image), "L"
    if mode == "1":
        notes.append("1bit->rgb")
        return image.convert("RGB")
    if mode == "CMYK":
        notes.append("cmyk->rgb")
        return image.convert("RGB")
    if mode == "YCbCr":
        notes.append("ycbcr->rgb")
        return image.convert("RGB")
    if mode in ("P", "PA"):
        notes.append("palette->rgb")
    if mode in ("L", "LA", "La"):
        notes.append("gray->rgb")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        notes.append("alpha_on_white")
        return _composite_on_white(image)
    if mode in ("P", "L", "RGB", "RGBX"):
        return image.convert("RGB")
    return None


def validate_image(data: bytes, rules: ImageRules | None = None) -> ImageResult:
    """Decodes one encoded image fully and returns it as upright 8-bit RGB, or a rejection.

    Geometry rules are applied to the header size before any pixel data is decoded, so a decompression
    bomb costs only its header read. The full decode then catches truncated and corrupt files.

    Args:
        data: The encoded file (JPEG, PNG, WebP, GIF, TIFF, ... anything Pillow opens).
        rules: Acceptance limits; `ImageRules()` defaults when None.

    Returns:
        An `ImageResult`; check `.accepted` before using `.image`.

    Raises:
        RuntimeError: If `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is enabled in this process.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated files would pass as valid")
    rules = rules or ImageRules()
    if not data:
        return _reject(ImageReason.EMPTY, "zero-length file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        return _reject(ImageReason.TOO_LARGE, str(err))
    except Exception as err:  # hostile bytes can raise anything from a format plugin
        reason = ImageReason.TRUNCATED if _riff_is_short(data) else ImageReason.DECODE_ERROR
        return _reject(reason, f"{type(err).__name__}: {err}")

    rejection = _check_geometry(image.width, image.height, rules)
    if rejection is not None:
        return rejection

    notes: list[str] = []
    try:
        if getattr(image, "is_animated", False):
            notes.append("first_frame")
            image.seek(0)
        image.load()
    except Image.DecompressionBombError as err:
        # Multi-frame formats (GIF, DCX, ...) check frame sizes again while seeking and loading.
        return _reject(ImageReason.TOO_LARGE, str(err))
    except Exception as err:  # one bad file must not abort the batch that holds it
        # Pillow reports a cut-off JPEG/PNG stream as OSError("image file is truncated ...").
        truncated = isinstance(err, OSError) and "truncated" in str(err)
        reason = ImageReason.TRUNCATED if truncated else ImageReason.DECODE_ERROR
        return _reject(reason, f"{type(err).__name__}: {err}")

    image = _apply_exif_orientation(image, notes)
    rgb = _to_rgb(image, notes)
    if rgb is None:
        return _reject(ImageReason.UNSUPPORTED_MODE, f"mode {image.mode} has no defined RGB conversion")
    return ImageResult(image=rgb, normalizations=tuple(notes))
