"""`parquet_pairs`: image-text pairs as rows of Parquet files.

`image_column` holds either a path relative to the Parquet file's directory, the encoded image bytes, or a
`{"bytes", "path"}` struct (the Hugging Face `datasets` Image layout); `caption_column` holds a string (or
binary) caption. One record per row, keyed `<file>#<row index>`, read in batches so a large file never sits
in memory whole.

A file without one of the two columns yields every row as a `missing_field` record (the row count comes
from the footer); a file that cannot be opened yields one `unreadable` record keyed `<file>#!file`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from preprocessing.sources.reader import Reader, caption_bytes, load_image_ref, resolve_image_ref
from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = ["READER"]

_BATCH_ROWS = 512


def _record(spec: SourceSpec, rel: str, row: int | str, **fields: object) -> RawRecord:
    provenance = f"row {row}" if isinstance(row, int) else "whole file"
    return RawRecord(source=spec.name, key=f"{rel}#{row}", kind="pair", input_file=rel, provenance=provenance, **fields)


def read_parquet(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one pair record per row of the Parquet file at `path`."""
    rel = spec.relative(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        yield _record(spec, rel, "!file", error=RecordError.UNREADABLE, error_detail=f"{type(err).__name__}: {err}")
        return
    with parquet:
        columns = [spec.image_column, spec.caption_column]
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            detail = f"file lacks column(s) {missing}"
            for row in range(parquet.metadata.num_rows):
                yield _record(spec, rel, row, error=RecordError.MISSING_FIELD, error_detail=detail)
            return
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                images, captions = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                for image_cell, caption_cell in zip(images, captions, strict=True):
                    yield _row_record(spec, path, rel, row, image_cell, caption_cell)
                    row += 1
        except (pa.ArrowException, OSError) as err:
            # Rows already yielded stand; the rest of the file becomes one quarantined record.
            detail = f"from row {row}: {type(err).__name__}: {err}"
            yield _record(spec, rel, "!file", error=RecordError.UNREADABLE, error_detail=detail)


def _row_record(spec: SourceSpec, path: Path, rel: str, row: int, image_cell: object, caption: object) -> RawRecord:
    text, caption_detail = caption_bytes(caption, spec.caption_column)
    image, error, detail = load_image_ref(spec, path.parent, image_cell, spec.image_column)
    if caption_detail:
        error, detail = RecordError.MISSING_FIELD, caption_detail
    return _record(spec, rel, row, image_bytes=image, text=text, error=error, error_detail=detail)


def referenced_images(spec: SourceSpec, path: Path) -> list[Path]:
    """Existing image files named by the image column of the Parquet file at `path`, without repeats."""
    try:
        table = pq.read_table(path, columns=[spec.image_column])
    except (pa.ArrowException, OSError, KeyError):
        return []  # read_parquet reports the problem as records
    found: dict[Path, None] = {}
    for cell in table.column(0).to_pylist():
        image = resolve_image_ref(path.parent, cell)
        if image is not None and image.is_file():
            found.setdefault(image)
    return list(found)


READER = Reader(
    format="parquet_pairs", suffixes=(".parquet",), read_file=read_parquet, referenced_files=referenced_images
)
