"""Tests for preprocessing.quarantine: Parquet round trip, atomic writes and record accounting."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from preprocessing.quarantine import QUARANTINE_SCHEMA, QuarantineWriter, SourceCounts, read_quarantine
from preprocessing.validate_image import ImageReason, validate_image
from preprocessing.validate_text import Deduplicator, TextReason


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_round_trip(tmp_path: Path) -> None:
    writer = QuarantineWriter(tmp_path / "out" / "quarantine.parquet")
    writer.add("tuxpaint", "stamp-3", ImageReason.TOO_SMALL, "12x12 has a side below min_side=16", 311)
    writer.add("wordnet", "gloss-9", TextReason.DUPLICATE, Deduplicator.detail("gloss-2"))
    writer.add("tuxpaint", "stamp-8", "truncated", "OSError: image file is truncated", 0)
    path = writer.write()

    assert path == tmp_path / "out" / "quarantine.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["quarantine.parquet"]  # no temporary file left
    table = read_quarantine(path)
    assert table.schema.equals(QUARANTINE_SCHEMA, check_metadata=True)
    assert table.to_pylist() == [
        {
            "source": "tuxpaint",
            "key": "stamp-3",
            "reason": "too_small",
            "detail": "12x12 has a side below min_side=16",
            "num_bytes": 311,
        },
        {
            "source": "wordnet",
            "key": "gloss-9",
            "reason": "duplicate",
            "detail": "duplicate_of=gloss-2",
            "num_bytes": None,
        },
        {
            "source": "tuxpaint",
            "key": "stamp-8",
            "reason": "truncated",
            "detail": "OSError: image file is truncated",
            "num_bytes": 0,
        },
    ]
    assert writer.reason_histogram() == {
        ("tuxpaint", "too_small"): 1,
        ("wordnet", "duplicate"): 1,
        ("tuxpaint", "truncated"): 1,
    }


def test_schema_is_pinned() -> None:
    # Downstream readers (audits, re-runs on quarantined keys) rely on these exact columns and types.
    assert [(f.name, str(f.type), f.nullable) for f in QUARANTINE_SCHEMA] == [
        ("source", "string", False),
        ("key", "string", False),
        ("reason", "string", False),
        ("detail", "string", False),
        ("num_bytes", "int64", True),
    ]


def test_empty_writer_still_writes_a_table(tmp_path: Path) -> None:
    table = read_quarantine(QuarantineWriter(tmp_path / "q.parquet").write())
    assert table.num_rows == 0 and table.schema.names == QUARANTINE_SCHEMA.names


def test_rewrite_replaces_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    first = QuarantineWriter(path)
    first.add("a", "k1", "empty")
    first.add("a", "k2", "empty")
    first.write()
    second = QuarantineWriter(path)
    second.add("a", "k3", "not_utf8")
    second.write()
    assert read_quarantine(path).column("key").to_pylist() == ["k3"]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "q.parquet"
    target.mkdir()  # a directory in the way makes the final os.replace fail after the Parquet file is written
    writer = QuarantineWriter(target)
    writer.add("a", "k1", "empty")
    with pytest.raises(OSError):
        writer.write()
    assert [p.name for p in tmp_path.iterdir()] == ["q.parquet"]


def test_read_rejects_foreign_schema(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"key": ["x"]}), path)
    with pytest.raises(ValueError, match="QUARANTINE_SCHEMA"):
        read_quarantine(path)


def test_source_counts_check() -> None:
    SourceCounts(source="tuxpaint", records_in=950, records_out=940, records_quarantined=10).check()
    with pytest.raises(ValueError, match=r"source 'tuxpaint'.*difference 1"):
        SourceCounts(source="tuxpaint", records_in=950, records_out=940, records_quarantined=9).check()
    with pytest.raises(ValueError, match="'fortunes'"):
        SourceCounts(source="fortunes", records_in=10, records_out=10, records_quarantined=1).check()
    with pytest.raises(ValueError, match="records_out must be >= 0"):
        SourceCounts(source="x", records_in=0, records_out=-1, records_quarantined=1)


def test_validation_accounting_end_to_end(tmp_path: Path) -> None:
    records = {"ok-1": _png((32, 32)), "tiny": _png((4, 4)), "junk": b"not an image", "ok-2": _png((40, 30))}
    writer = QuarantineWriter(tmp_path / "quarantine.parquet")
    writer.add("other", "x", "empty")  # another source's rejections must not count towards this one
    num_out = 0
    for key, data in records.items():
        result = validate_image(data)
        if result.accepted:
            num_out += 1
        else:
            writer.add("stamps", key, str(result.reason), result.message, len(data))
    writer.counts("stamps", records_in=len(records), records_out=num_out).check()
    with pytest.raises(ValueError, match="'stamps'"):
        writer.counts("stamps", records_in=len(records) + 1, records_out=num_out).check()
    table = read_quarantine(writer.write())
    assert sorted(table.column("reason").to_pylist()) == ["decode_error", "empty", "too_small"]
