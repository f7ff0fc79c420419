"""Readers that turn raw data sources into `RawRecord`s, one reader per on-disk format.

Every reader offers the same three calls (see `Reader`): `iter_records(spec)`, `list_input_files(spec)`
(every file the records depend on, for cache keys and sharding) and `iter_records_of_files(spec, files)`
(the records of a subset of those files: one shard). The module-level functions of the same names
dispatch on `spec.format`.

Example:
    spec = SourceSpec(name="tuxpaint", format="webdataset", path="data/demo/tuxpaint")
    for record in iter_records(spec):
        ...  # validate_image(record.image_bytes or b""), validate_text(record.text or b""), or quarantine
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from preprocessing.sources import coco, folders, jsonl, parquet, webdataset
from preprocessing.sources.reader import Reader
from preprocessing.sources.records import RawRecord, RecordError, RecordKind, SourceSpec

__all__ = [
    "READERS",
    "RawRecord",
    "Reader",
    "RecordError",
    "RecordKind",
    "SourceSpec",
    "get_reader",
    "input_groups",
    "iter_records",
    "iter_records_of_files",
    "list_input_files",
]

READERS: dict[str, Reader] = {
    reader.format: reader
    for reader in (
        webdataset.READER,
        parquet.READER,
        jsonl.PAIRS_READER,
        coco.COCO_READER,
        coco.KARPATHY_READER,
        folders.IMAGE_FOLDER_READER,
        folders.IMAGENET_FOLDER_READER,
        folders.TEXT_FILES_READER,
        jsonl.TEXT_READER,
    )
}
"""Format name -> reader."""


def get_reader(format: str) -> Reader:
    """The reader of `format`.

    Raises:
        ValueError: If no reader has that name; the message lists the known formats.
    """
    try:
        return READERS[format]
    except KeyError:
        raise ValueError(f"unknown source format {format!r}; known formats: {', '.join(READERS)}") from None


def iter_records(spec: SourceSpec) -> Iterator[RawRecord]:
    """Every record of `spec`, in a stable order."""
    return get_reader(spec.format).iter_records(spec)


def list_input_files(spec: SourceSpec) -> list[Path]:
    """Every file whose content the records of `spec` depend on."""
    return get_reader(spec.format).list_input_files(spec)


def input_groups(spec: SourceSpec) -> list[list[str]]:
    """Input files grouped so that each group must stay in one shard (see `preprocessing.sources.reader`)."""
    return get_reader(spec.format).input_groups(spec)


def iter_records_of_files(spec: SourceSpec, files: Iterable[str | os.PathLike[str]]) -> Iterator[RawRecord]:
    """The records of `spec` read from `files`, a subset of `list_input_files(spec)`."""
    return get_reader(spec.format).iter_records_of_files(spec, files)
