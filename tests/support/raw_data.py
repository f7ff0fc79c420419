"""A small raw dataset in several source formats, with one record of each kind of bad input."""

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = "red blue green small large cat dog house tree car boat bird fish apple stone cloud".split()


def image_bytes(seed: int, size=(48, 40), fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.NEAREST).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def caption(seed: int) -> str:
    rng = np.random.default_rng(seed + 1000)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build_raw_dataset(root: Path) -> dict:
    """Writes the sources under `root`; returns the source specs (as dicts) and the expected rejects."""
    pairs = root / "pairs"
    pairs.mkdir(parents=True)
    for part in range(2):
        members = []
        for i in range(12):
            seed = part * 100 + i
            members += [(f"{seed:06d}.png", image_bytes(seed)), (f"{seed:06d}.txt", caption(seed).encode())]
        if part == 0:
            good = image_bytes(7)
            members += [("bad_trunc.png", good[: len(good) // 2]), ("bad_trunc.txt", b"a cut image")]
            members += [("bad_empty.png", image_bytes(8)), ("bad_empty.txt", b"   ")]
            members += [("bad_dup.png", image_bytes(3)), ("bad_dup.txt", caption(3).encode())]  # = sample 3
            members += [("bad_tiny.png", image_bytes(9, size=(8, 8))), ("bad_tiny.txt", b"too small")]
        _write_tar(pairs / f"part-{part:05d}.tar", members)

    images = root / "images"
    images.mkdir()
    for i in range(10):
        (images / f"img{i:03d}.jpg").write_bytes(image_bytes(500 + i, fmt="JPEG"))
    (images / "cmyk.jpg").write_bytes(image_bytes(520, fmt="JPEG", mode="CMYK"))
    (images / "broken.jpg").write_bytes(b"not an image at all")

    texts = root / "texts"
    texts.mkdir()
    lines = [caption(700 + i) + " and more words here" for i in range(30)]
    lines += [lines[0], "\x01\x02\x03\x04\x05\x06 ctrl"]
    (texts / "corpus.txt").write_text("\n".join(lines) + "\n")
    (texts / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") + b"fine line of text\n")

    sources = [
        {"name": "pairs", "format": "webdataset", "path": str(pairs)},
        {"name": "images", "format": "image_folder", "path": str(images)},
        {"name": "texts", "format": "text_files", "path": str(texts)},
    ]
    expected = {
        "pairs": {"image_truncated", "text_empty", "duplicate", "image_too_small"},
        "images": {"image_decode_error"},
        "texts": {"duplicate", "text_control_chars", "text_not_utf8"},
    }
    return {"sources": sources, "expected_reasons": expected}


def tiny_preprocess_config(root: Path, output: Path, sources: list[dict], **extra) -> Path:
    """A YAML config that tokenizes with a 2x2-grid VQ-KD trained for a few steps and a tiny SentencePiece."""
    import yaml

    config = {
        "output": str(output),
        "sources": sources,
        "text": {"vocab_size": 60, "max_tokens": 16},
        "visual": {
            "config": "vqkd_tiny",
            "teacher": "hog",
            "num_codes": 8,
            "img_size": 32,
            "train_images": 40,
            "train_steps": 3,
            "batch_size": 8,
            "holdout_images": 8,
            "min_codebook_usage": 0.0,
            "batch_size_encode": 16,
        },
        "views": {"num_views": 2, "short_side": 40},
        "shards": {"files_per_shard": 4},
    } | extra
    path = root / "preprocess.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
