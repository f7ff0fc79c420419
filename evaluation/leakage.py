"""Is "zero-shot" honest? Test images and captions of a benchmark must not be in the pretraining shards.

Images are compared by content, not by file: the test file and the shard's stored copy are usually different
encodings of one picture (the shards store a re-encoded JPEG at a fixed short side; a benchmark copy may be a
smaller JPEG). Each image is reduced to a fingerprint that survives resizing and re-encoding: the upright RGB
picture, transparency composited on white, shrunk to 16 x 16 with box averaging (JPEG noise averages out), plus
its aspect ratio. Two images are the same picture when their aspect ratios agree within 3% and their
thumbnails differ by less than 3.5 grey levels on average. Measured on the demo (a benchmark copy is a 96 px
JPEG, the stored one a 256 px JPEG): that finds 100% of the emoji copies and 80% of the Tux Paint stamp copies
(thin line art moves more when shrunk twice), while distinct but similar pictures (two clock faces that differ
in their hands) lie 3.8 and more apart. It is a check for copies, not a near-duplicate search.

Captions are compared after normalisation (Unicode NFKC, case folding, punctuation dropped, whitespace
collapsed) with every caption and text in the shards.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from beit3_core.data.shard_format import iter_webdataset_shard
from beit3_core.train.streams import read_shard_refs
from preprocessing.validate_image import ImageRules, validate_image

# Any decodable picture gets a fingerprint: the check must not skip test images the training rules would reject.
_LENIENT = ImageRules(min_side=1, max_aspect=1e9)
_PUNCTUATION = re.compile(r"[^\w\s]")
_MAX_LISTED = 10
THUMB = 16
MAX_MEAN_DIFFERENCE = 3.5
"""Mean absolute difference (grey levels, 0-255) below which two thumbnails show the same picture."""
MAX_ASPECT_DIFFERENCE = 0.03


@dataclass(frozen=True)
class Overlap:
    kind: str
    """"image" or "caption"."""
    eval_record: str
    """The test image's path (and the caption for a caption overlap)."""
    shard_record: str
    """The shard record's key (`source/key`) and shard name."""


class LeakageError(ValueError):
    """Test records of a zero-shot benchmark were found in the pretraining data; the message lists them."""

    def __init__(self, unit: str, overlaps: list[Overlap]):
        self.overlaps = overlaps
        listed = "; ".join(f"{o.kind} {o.eval_record} = {o.shard_record}" for o in overlaps[:_MAX_LISTED])
        more = f" (+{len(overlaps) - _MAX_LISTED} more)" if len(overlaps) > _MAX_LISTED else ""
        super().__init__(
            f"{unit} is not zero-shot: {len(overlaps)} test records are in the pretraining shards: {listed}{more}"
        )


def normalise_caption(text: str) -> str:
    text = _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


def image_fingerprint(data: bytes) -> tuple[np.ndarray, float] | None:
    """(16 x 16 x 3 float32 thumbnail, width / height) of an encoded image; None if it does not decode."""
    result = validate_image(data, _LENIENT)
    if not result.accepted:
        return None
    image = result.image
    thumb = np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)
    return thumb, image.width / image.height


def _shard_images(shards_dir: str | Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(record key with its shard, image bytes or None, caption or None) of every shard record."""
    refs, _ = read_shard_refs(shards_dir)
    for ref in refs:
        for sample in iter_webdataset_shard(ref.tar):
            yield f"{sample['key']} (shard {ref.name})", sample.get("image_bytes"), sample["meta"].get("caption")


def find_overlaps(
    image_files: list[tuple[str, Path]], captions: list[tuple[str, str]], shards_dir: str | Path
) -> list[Overlap]:
    """Test records found in the shards.

    Args:
        image_files: (name to report, file) of every test image.
        captions: (image name, caption) of every test caption.
        shards_dir: A preprocessing output (manifest.json + shards).
    """
    tests = [(name, image_fingerprint(Path(path).read_bytes())) for name, path in image_files]
    tests = [(name, fp) for name, fp in tests if fp is not None]
    test_thumbs = np.stack([fp[0] for _, fp in tests]) if tests else np.zeros((0, THUMB, THUMB, 3), np.float32)
    test_aspects = np.array([fp[1] for _, fp in tests])
    wanted = {normalise_caption(caption): name for name, caption in reversed(captions)}
    found_images: dict[str, str] = {}
    found_captions: dict[str, str] = {}
    for where, data, caption in _shard_images(shards_dir):
        if caption and normalise_caption(caption) in wanted:
            found_captions.setdefault(normalise_caption(caption), where)
        fingerprint = image_fingerprint(data) if data is not None and len(tests) else None
        if fingerprint is None:
            continue
        thumb, aspect = fingerprint
        same = np.abs(test_aspects / aspect - 1) <= MAX_ASPECT_DIFFERENCE
        same &= np.abs(test_thumbs - thumb).mean(axis=(1, 2, 3)) < MAX_MEAN_DIFFERENCE
        for row in np.flatnonzero(same):
            found_images.setdefault(tests[row][0], where)
    overlaps = [Overlap("image", name, where) for name, where in found_images.items()]
    for name, caption in captions:
        where = found_captions.get(normalise_caption(caption))
        if where:
            overlaps.append(Overlap("caption", f"{name}: {caption!r}", where))
    return overlaps


def check_zeroshot_split(unit: str, split, shards_dirs: list[str | Path]) -> dict[str, int]:
    """Raise `LeakageError` naming the overlapping records if any test image or caption of `split` (a
    `evaluation.zeroshot.ZeroShotSplit`) is in the shards; else the numbers checked."""
    image_files = [(image.image_path, split.root / image.image_path) for image in split.images]
    captions = [(split.images[row].image_path, c) for c, row in zip(split.captions, split.text_to_image, strict=True)]
    overlaps = [o for shards in shards_dirs for o in find_overlaps(image_files, captions, shards)]
    if overlaps:
        raise LeakageError(unit, overlaps)
    return {"images_checked": len(image_files), "captions_checked": len(captions)}
