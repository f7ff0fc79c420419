"""Keep every rejected record in one Parquet table, and check that no record was silently lost.

Like img2dataset's per-shard Parquet (which lists failed samples next to successful ones), rejected
records are kept with their reason instead of being dropped, so a rejection rate can be audited and a rule
change re-run on exactly the affected keys. The accounting check enforces, per source,
`records_in == records_out + records_quarantined`.

The table is written atomically as the orchestration spec prescribes for shards: to a temporary name in
the destination directory, then `os.replace`. The temporary name starts with `_`, which
`pyarrow.dataset.dataset` ignores by default, and ends with `.tmp`, so a crash never leaves a half-written
file that a reader would pick up as a Parquet file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from beit3_core.runtime.atomic import atomic_path

__all__ = ["QUARANTINE_SCHEMA", "QuarantineRecord", "QuarantineWriter", "SourceCounts", "read_quarantine"]

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        # Null when the original payload size is unknown (e.g. the record failed before its bytes were read).
        pa.field("num_bytes", pa.int64(), nullable=True),
    ],
    metadata={"table": "quarantine", "schema_version": "1"},
)


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected record.

    Attributes:
        source: Dataset or source name the record came from (e.g. "tuxpaint").
        key: The record's key within its source.
        reason: Machine-readable reason code (an `ImageReason` / `TextReason` value).
        detail: Human-readable detail, e.g. "duplicate_of=rec-1".
        num_bytes: Size of the original payload in bytes, when known.
    """

    source: str
    key: str
    reason: str
    detail: str = ""
    num_bytes: int | None = None


@dataclass(kw_only=True, frozen=True)
class SourceCounts:
    """Record accounting for one source after validation."""

    source: str
    """Name of the source, quoted in the error when the counts disagree."""
    records_in: int
    """Records read from the source."""
    records_out: int
    """Records accepted and passed on."""
    records_quarantined: int
    """Records written to the quarantine table."""

    def __post_init__(self) -> None:
        for name in ("records_in", "records_out", "records_quarantined"):
            if getattr(self, name) < 0:
                raise ValueError(f"source {self.source!r}: {name} must be >= 0, got {getattr(self, name)}")

    def check(self) -> None:
        """Raises ValueError naming the source unless every input record was either kept or quarantined."""
        accounted = self.records_out + self.records_quarantined
        if self.records_in != accounted:
            raise ValueError(
                f"source {self.source!r}: records_in={self.records_in} != records_out={self.records_out} + "
                f"records_quarantined={self.records_quarantined} (difference {self.records_in - accounted})"
            )


class QuarantineWriter:
    """Collects rejected records in memory and writes them as one Parquet table.

    Rejections are a small fraction of a corpus and carry no payload, so holding them until `write` is
    cheap and lets the file appear atomically, once.

    Example:
        writer = QuarantineWriter(out_dir / "quarantine.parquet")
        writer.add("tuxpaint", "stamp-17", "too_small", "12x12 has a side below min_side=16", 311)
        writer.counts("tuxpaint", records_in=950, records_out=949).check()
        writer.write()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._records: list[QuarantineRecord] = []

    def __len__(self) -> int:
        return len(self._records)

    def add(self, source: str, key: str, reason: str, detail: str = "", num_bytes: int | None = None) -> None:
        """Adds one rejected record; see `QuarantineRecord` for the fields."""
        self._records.append(QuarantineRecord(source, key, str(reason), detail, num_bytes))

    def num_quarantined(self, source: str) -> int:
        """Number of records added so far for `source`."""
        return sum(1 for r in self._records if r.source == source)

    def counts(self, source: str, records_in: int, records_out: int) -> SourceCounts:
        """Builds the `SourceCounts` of `source` from the caller's in/out counts and this writer's records."""
        return SourceCounts(
            source=source,
            records_in=records_in,
            records_out=records_out,
            records_quarantined=self.num_quarantined(source),
        )

    def reason_histogram(self) -> dict[tuple[str, str], int]:
        """Counts of quarantined records per (source, reason), for logging and run metrics."""
        return dict(Counter((r.source, r.reason) for r in self._records))

    def to_table(self) -> pa.Table:
        """The collected records as a table with `QUARANTINE_SCHEMA` (zero rows when nothing was rejected)."""
        columns = {name: [getattr(r, name) for r in self._records] for name in QUARANTINE_SCHEMA.names}
        return pa.Table.from_pydict(columns, schema=QUARANTINE_SCHEMA)

    def write(self) -> Path:
        """Writes the table atomically, replacing any previous file at `path`, and returns `path`.

        An empty table is written too, so a finished run always leaves a file behind and readers can tell
        "no rejections" from "validation never ran".
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            pq.write_table(self.to_table(), tmp, compression="zstd")
        return self.path


def read_quarantine(path: str | os.PathLike[str]) -> pa.Table:
    """Reads a quarantine table, checking that its columns match `QUARANTINE_SCHEMA`.

    Raises:
        ValueError: If the file holds a different schema.
    """
    table = pq.read_table(path)
    if not table.schema.equals(QUARANTINE_SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: schema {table.schema} does not match QUARANTINE_SCHEMA")
    return table
