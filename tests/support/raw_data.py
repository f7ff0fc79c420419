"""A small raw dataset with one source of every reader format, each with a few bad records natural to it."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


def _write_jsonl(path: Path, rows: list) -> None:
    """One line per row: dicts and lists are dumped as JSON, strings are written as they are (malformed lines)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def build_raw_dataset(root: Path) -> dict:
    """Writes one source of every reader format under `root`; returns the source specs (as dicts) and the
    expected quarantine reasons per source (each planted bad record has its own reason).

    Image seeds and caption suffixes differ between sources, so no record is a cross-source duplicate except
    the ones planted on purpose.
    """
    sources: list[dict] = []
    expected: dict[str, set[str]] = {}

    # webdataset: tar pairs with a truncated image, a blank caption, a duplicate sample and a tiny image.
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
    sources.append({"name": "pairs", "format": "webdataset", "path": str(pairs)})
    expected["pairs"] = {"image_truncated", "text_empty", "duplicate", "image_too_small"}

    # parquet_pairs: custom column names; paths and inline bytes; a row naming a missing file, a null caption.
    table_dir = root / "table"
    (table_dir / "img").mkdir(parents=True)
    for i in range(3):
        (table_dir / "img" / f"t{i}.png").write_bytes(image_bytes(200 + i))
    # Image cells in the Hugging Face `Image` layout: a path relative to the table, or the encoded bytes.
    rows = [({"bytes": None, "path": f"img/t{i}.png"}, caption(200 + i) + " in a table") for i in range(3)]
    rows += [
        ({"bytes": image_bytes(203), "path": None}, caption(203) + " stored inline"),
        ({"bytes": None, "path": "img/gone.png"}, "this image file was never written"),
        ({"bytes": None, "path": "img/t0.png"}, None),
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {"url": pa.array([r[0] for r in rows], image_type), "text": pa.array([r[1] for r in rows], pa.string())}
    pq.write_table(pa.table(columns), table_dir / "pairs.parquet")
    sources.append(
        {
            "name": "table",
            "format": "parquet_pairs",
            "path": str(table_dir),
            "image_column": "url",
            "caption_column": "text",
        }
    )
    expected["table"] = {"missing_file", "text_empty"}

    # jsonl_pairs: a malformed line, a row without its caption field, a row naming a missing image.
    jsonl_pairs = root / "jsonl_pairs"
    (jsonl_pairs / "images").mkdir(parents=True)
    for i in range(3):
        (jsonl_pairs / "images" / f"j{i}.png").write_bytes(image_bytes(300 + i))
    _write_jsonl(
        jsonl_pairs / "pairs.jsonl",
        [{"image": f"images/j{i}.png", "caption": caption(300 + i) + " in json lines"} for i in range(3)]
        + ['{"image": "images/j0.png", "caption": "unterminated', {"image": "images/j1.png"}]
        + [{"image": "images/gone.png", "caption": "this image file was never written"}],
    )
    sources.append({"name": "jsonl_pairs", "format": "jsonl_pairs", "path": str(jsonl_pairs)})
    expected["jsonl_pairs"] = {"bad_json", "missing_field", "missing_file"}

    # coco_captions: images in a sibling folder (image_dir); an image whose file is missing, an orphan caption.
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train2014").mkdir()
    for i in range(3):
        (coco / "train2014" / f"c{i}.jpg").write_bytes(image_bytes(400 + i, fmt="JPEG"))
    coco_json = {
        "images": [{"id": i + 1, "file_name": f"c{i}.jpg"} for i in range(3)] + [{"id": 4, "file_name": "gone.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": caption(400) + " from coco"},
            {"id": 11, "image_id": 1, "caption": caption(401) + " again from coco"},
            {"id": 12, "image_id": 2, "caption": caption(402) + " from coco"},
            {"id": 13, "image_id": 3, "caption": caption(403) + " from coco"},
            {"id": 14, "image_id": 4, "caption": "this image file was never written"},
            {"id": 15, "image_id": 99, "caption": "an annotation of no listed image"},
        ],
    }
    (coco / "annotations" / "captions_train2014.json").write_text(json.dumps(coco_json))
    sources.append(
        {
            "name": "coco",
            "format": "coco_captions",
            "path": str(coco / "annotations" / "captions_train2014.json"),
            "image_dir": "../train2014",
        }
    )
    expected["coco"] = {"missing_file", "missing_field"}

    # karpathy: only the train and restval splits; a missing image file, an image with no sentences.
    karpathy = root / "karpathy"
    (karpathy / "val2014").mkdir(parents=True)
    for i in range(4):
        (karpathy / "val2014" / f"k{i}.jpg").write_bytes(image_bytes(450 + i, fmt="JPEG"))

    def entry(i: int, split: str, sentences: list[str], filename: str | None = None) -> dict:
        name = filename or f"k{i}.jpg"
        return {"filepath": "val2014", "filename": name, "split": split, "sentences": [{"raw": s} for s in sentences]}

    karpathy_json = {
        "dataset": "coco",
        "images": [
            entry(0, "train", [caption(450) + " karpathy", caption(451) + " karpathy too"]),
            entry(1, "restval", [caption(452) + " karpathy"]),
            entry(2, "test", [caption(453) + " not in the selected splits"]),
            entry(3, "train", [caption(454) + " karpathy"]),
            entry(4, "train", ["this image file was never written"], filename="gone.jpg"),
            entry(3, "restval", []),
        ],
    }
    (karpathy / "dataset_coco.json").write_text(json.dumps(karpathy_json))
    sources.append(
        {
            "name": "karpathy",
            "format": "karpathy",
            "path": str(karpathy / "dataset_coco.json"),
            "split": "train,restval",
        }
    )
    expected["karpathy"] = {"missing_file", "missing_field"}

    # image_folder: a CMYK JPEG (converted, kept) and a file that is no image.
    images = root / "images"
    images.mkdir()
    for i in range(10):
        (images / f"img{i:03d}.jpg").write_bytes(image_bytes(500 + i, fmt="JPEG"))
    (images / "cmyk.jpg").write_bytes(image_bytes(520, fmt="JPEG", mode="CMYK"))
    (images / "broken.jpg").write_bytes(b"not an image at all")
    sources.append({"name": "images", "format": "image_folder", "path": str(images)})
    expected["images"] = {"image_decode_error"}

    # imagenet_folder: class folders; an image outside any class folder, a strip too thin for its length.
    # Its 7 files hash into 2 buckets, each holding a good image (a shard of only bad records fails to write).
    classes = root / "classes"
    for label, seeds in (("cat", (600, 601, 606)), ("dog", (602, 603))):
        (classes / label).mkdir(parents=True)
        for seed in seeds:
            (classes / label / f"{seed}.png").write_bytes(image_bytes(seed))
    (classes / "stray.png").write_bytes(image_bytes(604))
    (classes / "dog" / "strip.png").write_bytes(image_bytes(605, size=(160, 16)))
    sources.append({"name": "classes", "format": "imagenet_folder", "path": str(classes)})
    expected["classes"] = {"missing_field", "image_bad_aspect"}

    # text_files: a repeated line, a line of control characters, a Latin-1 file.
    texts = root / "texts"
    texts.mkdir()
    lines = [caption(700 + i) + " and more words here" for i in range(30)]
    lines += [lines[0], "\x01\x02\x03\x04\x05\x06 ctrl"]
    (texts / "corpus.txt").write_text("\n".join(lines) + "\n")
    (texts / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") + b"fine line of text\n")
    sources.append({"name": "texts", "format": "text_files", "path": str(texts)})
    expected["texts"] = {"duplicate", "text_control_chars", "text_not_utf8"}

    # jsonl_text: a custom text field; a malformed line, a row without that field, a lone surrogate.
    jsonl_text = root / "jsonl_text"
    jsonl_text.mkdir()
    _write_jsonl(
        jsonl_text / "docs.jsonl",
        [{"body": caption(800 + i) + " as a json document", "id": i} for i in range(5)]
        + ["not json at all", {"text": "the wrong field"}, '{"body": "lone \\ud800 surrogate"}'],
    )
    sources.append({"name": "jsonl_text", "format": "jsonl_text", "path": str(jsonl_text), "text_field": "body"})
    expected["jsonl_text"] = {"bad_json", "missing_field", "text_not_utf8"}

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
