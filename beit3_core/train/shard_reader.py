"""Random access to the records of pretraining shards: read exactly the records asked for, nothing else.

The first access to a shard builds its index: the tar's member headers (512 bytes per member, read
unbuffered) and the `key` and `kind` columns of its Parquet file, which give each record's kind and check that
both files list the same samples in the same order. A record is then two `os.pread` calls (its `.json` and,
for images and pairs, its `.jpg`). Indexes and open files are kept for the most recently used shards.
"""

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from beit3_core.data.shard_format import (
    ShardFormatError,
    encode_wds_key,
    index_webdataset_shard,
    read_indexed_sample,
)

logger = logging.getLogger(__name__)

Entry = tuple[str, tuple[tuple[str, int, int], ...]]


@dataclass(frozen=True)
class ShardRef:
    name: str
    tar: Path
    counts: dict[str, int]
    parquet: Path | None = None
    """The shard's Parquet file (kinds and keys for the index); None: `<tar stem>.parquet`."""


@dataclass
class ReadStats:
    records: int = 0
    bytes: int = 0
    """Bytes of record data read (the `.json` and `.jpg` members)."""
    index_scans: int = 0


class ShardReader:
    """Reads records by (shard, kind, offset of the kind in the shard); see the module docstring."""

    def __init__(self, max_open: int = 16):
        self.max_open = max(1, max_open)
        self._open: OrderedDict[Path, tuple[int, dict[str, list[Entry]]]] = OrderedDict()
        self.stats = ReadStats()

    def _shard(self, ref: ShardRef) -> tuple[int, dict[str, list[Entry]]]:
        if ref.tar in self._open:
            self._open.move_to_end(ref.tar)
            return self._open[ref.tar]
        entries = index_webdataset_shard(ref.tar)
        parquet = ref.parquet or ref.tar.with_suffix(".parquet")
        try:
            table = pq.read_table(parquet, columns=["key", "kind"]).to_pydict()
        except (OSError, ValueError) as err:
            raise ShardFormatError(f"{parquet}: unreadable Parquet shard: {err}") from err
        if [encode_wds_key(str(k)) for k in table["key"]] != [stem for stem, _ in entries]:
            raise ShardFormatError(f"{ref.tar}: its samples differ from the rows of {parquet}")
        by_kind: dict[str, list[Entry]] = {}
        for entry, kind in zip(entries, table["kind"], strict=True):
            by_kind.setdefault(kind, []).append(entry)
        self.stats.index_scans += 1
        fd = os.open(ref.tar, os.O_RDONLY)
        self._open[ref.tar] = fd, by_kind
        while len(self._open) > self.max_open:
            old_fd, _ = self._open.popitem(last=False)[1]
            os.close(old_fd)
        return fd, by_kind

    def read(self, ref: ShardRef, kind: str, offset: int) -> dict:
        fd, by_kind = self._shard(ref)
        records = by_kind.get(kind, [])
        if offset >= len(records):
            raise ShardFormatError(
                f"{ref.tar}: holds {len(records)} {kind} records, the manifest says {ref.counts.get(kind, 0)}"
            )
        stem, members = records[offset]
        sample = read_indexed_sample(fd, ref.tar, stem, members)
        self.stats.records += 1
        self.stats.bytes += sum(size for _, _, size in members)
        return sample

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1][0])

    def __del__(self):
        self.close()
