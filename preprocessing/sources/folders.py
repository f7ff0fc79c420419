"""`image_folder`, `imagenet_folder` and `text_files`: sources that are plain files in a directory tree.

`image_folder` yields one image record per image file found recursively; `imagenet_folder` does the same
with the first directory below the root as the class label (the torchvision `ImageFolder` layout), and
marks an image lying directly in the root `missing_field` rather than guessing a class. Image files are
recognised by suffix only; whether they decode is for validation to decide. The key is the relative path.

`text_files` yields one text record per line of each `.txt` file, not per paragraph: the demo and most
raw corpora already hold one document or sentence per line, a line is what SentencePiece's trainer
samples, and line numbers make keys (`<file>#L<line number>`) that survive edits elsewhere in the file.
Lines are split on `\\n` and keep their exact bytes except the terminator (`\\n` or `\\r\\n`); lines holding
only ASCII whitespace are skipped, anything else (invalid UTF-8, a byte-order mark) goes to validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from preprocessing.sources.reader import Reader
from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = ["IMAGE_FOLDER_READER", "IMAGENET_FOLDER_READER", "IMAGE_SUFFIXES", "TEXT_FILES_READER"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _image_record(spec: SourceSpec, path: Path, label: str | None = None) -> RawRecord:
    rel = spec.relative(path)
    try:
        image, error, detail = path.read_bytes(), None, ""
    except OSError as err:
        image, error, detail = None, RecordError.UNREADABLE, str(err)
    return RawRecord(
        source=spec.name,
        key=rel,
        kind="image",
        input_file=rel,
        provenance="whole file",
        image_bytes=image,
        label=label,
        error=error,
        error_detail=detail,
    )


def read_image(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields the image record of one file."""
    yield _image_record(spec, path)


def read_labeled_image(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields the image record of one file, labelled with its class folder."""
    parts = spec.relative(path).split("/")
    record = _image_record(spec, path, label=parts[0] if len(parts) > 1 else None)
    if record.label is None and record.error is None:
        detail = "image lies in the source root, not in a class folder"
        record = replace(record, error=RecordError.MISSING_FIELD, error_detail=detail)
    yield record


def read_lines(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one text record per non-blank line of the text file at `path`."""
    rel = spec.relative(path)
    line_number = 0
    try:
        with path.open("rb") as handle:
            for line_number, line in enumerate(handle, start=1):  # noqa: B007 - read after the loop on errors
                raw = line[:-1] if line.endswith(b"\n") else line
                raw = raw[:-1] if raw.endswith(b"\r") else raw
                if raw.strip():
                    yield RawRecord(
                        source=spec.name,
                        key=f"{rel}#L{line_number}",
                        kind="text",
                        input_file=rel,
                        provenance=f"line {line_number}",
                        text=raw,
                    )
    except OSError as err:
        yield RawRecord(
            source=spec.name,
            key=f"{rel}#!file",
            kind="text",
            input_file=rel,
            provenance=f"whole file (read failed after line {line_number})",
            error=RecordError.UNREADABLE,
            error_detail=str(err),
        )


IMAGE_FOLDER_READER = Reader(format="image_folder", suffixes=IMAGE_SUFFIXES, read_file=read_image)
IMAGENET_FOLDER_READER = Reader(format="imagenet_folder", suffixes=IMAGE_SUFFIXES, read_file=read_labeled_image)
TEXT_FILES_READER = Reader(format="text_files", suffixes=(".txt",), read_file=read_lines)
