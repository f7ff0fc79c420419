"""`jsonl_pairs` and `jsonl_text`: one JSON object per line (JSON Lines).

`jsonl_pairs` rows name an image file, relative to the JSONL file's directory, in `image_column` and hold
a caption in `caption_column`; `jsonl_text` rows hold the text in `text_field`. One record per non-blank
line, keyed `<file>#L<line number>` (1-based, blank lines counted), so keys stay put when rows are appended.

A line that does not parse, is not an object, or lacks a required field yields a record with `error` set;
a field present but null yields the payload None (no error), and validation rejects it as empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from preprocessing.sources.reader import Reader, caption_bytes, load_image_ref, resolve_image_ref
from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = ["PAIRS_READER", "TEXT_READER", "iter_json_lines"]

_MISSING = object()


def iter_json_lines(spec: SourceSpec, path: Path, kind: str) -> Iterator[tuple[dict[str, Any], RawRecord]]:
    """Yields `(row, record)` per non-blank line: the parsed row and a payload-less record for it.

    A line that is not a JSON object is yielded as `({}, record)` with the record's `error` already set; a
    file that cannot be read yields one error record keyed `<file>#!file`.
    """
    rel = spec.relative(path)
    try:
        with path.open("rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = RawRecord(
                    source=spec.name,
                    key=f"{rel}#L{line_number}",
                    kind=kind,
                    input_file=rel,
                    provenance=f"line {line_number}",
                )
                try:
                    row = json.loads(line)  # bytes: json detects UTF-8/16/32 itself
                except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                    yield {}, _with_error(record, RecordError.BAD_JSON, str(err))
                    continue
                if not isinstance(row, dict):
                    yield {}, _with_error(record, RecordError.BAD_JSON, f"line holds a JSON {type(row).__name__}")
                    continue
                yield row, record
    except OSError as err:
        unreadable = RawRecord(
            source=spec.name,
            key=f"{rel}#!file",
            kind=kind,
            input_file=rel,
            provenance="whole file",
            error=RecordError.UNREADABLE,
            error_detail=str(err),
        )
        yield {}, unreadable


def _with_error(record: RawRecord, error: RecordError, detail: str) -> RawRecord:
    return replace(record, error=error, error_detail=detail)


def read_pairs(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one pair record per non-blank line of the JSONL file at `path`."""
    for row, record in iter_json_lines(spec, path, "pair"):
        if record.error:
            yield record
            continue
        missing = [c for c in (spec.image_column, spec.caption_column) if row.get(c, _MISSING) is _MISSING]
        if missing:
            yield _with_error(record, RecordError.MISSING_FIELD, f"row lacks field(s) {missing}")
            continue
        text, detail = caption_bytes(row[spec.caption_column], spec.caption_column)
        image, error, image_detail = load_image_ref(spec, path.parent, row[spec.image_column], spec.image_column)
        if detail:
            error, image_detail = RecordError.MISSING_FIELD, detail
        yield replace(record, image_bytes=image, text=text, error=error, error_detail=image_detail)


def read_text(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one text record per non-blank line of the JSONL file at `path`."""
    for row, record in iter_json_lines(spec, path, "text"):
        if record.error:
            yield record
        elif spec.text_field not in row:
            yield _with_error(record, RecordError.MISSING_FIELD, f"row lacks field {spec.text_field!r}")
        else:
            text, detail = caption_bytes(row[spec.text_field], spec.text_field)
            yield replace(record, text=text, error=RecordError.MISSING_FIELD if detail else None, error_detail=detail)


def referenced_images(spec: SourceSpec, path: Path) -> list[Path]:
    """Existing image files named by the rows of the JSONL file at `path`, in row order, without repeats."""
    found: dict[Path, None] = {}
    for row, record in iter_json_lines(spec, path, "pair"):
        image = None if record.error else resolve_image_ref(path.parent, row.get(spec.image_column))
        if image is not None and image.is_file():
            found.setdefault(image)
    return list(found)


PAIRS_READER = Reader(
    format="jsonl_pairs", suffixes=(".jsonl",), read_file=read_pairs, referenced_files=referenced_images
)
TEXT_READER = Reader(format="jsonl_text", suffixes=(".jsonl",), read_file=read_text)
