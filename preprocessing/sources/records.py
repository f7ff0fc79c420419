"""The two data types every source reader shares: what to read (`SourceSpec`) and what it read (`RawRecord`).

Readers do no validation. They hand over the raw bytes of each image and caption exactly as stored, so that
`preprocessing.validate_image` / `validate_text` make every accept/reject decision in one place and the
quarantine table sees every record (img2dataset keeps failed samples in its per-shard Parquet for the same
reason). A record whose container is malformed (bad JSON line, missing column, missing referenced file) is
still emitted, with `error` set, so the pipeline can quarantine it instead of losing it.

Keys have the form `<input_file>#<locator>` (the locator is a line number, row index, tar sample key, ...),
except for folder formats, whose key is the file's relative path. They are unique within a source and
stable across runs as long as the input file is unchanged. They may contain `/`, `.` and `#`, so a shard
writer must derive its own webdataset `__key__` (which may not contain dots) from them.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = ["RawRecord", "RecordError", "RecordKind", "SourceSpec"]

RecordKind = Literal["image", "text", "pair"]


class RecordError(enum.StrEnum):
    """Why a record could not be read from its container (stored as plain strings in the quarantine table)."""

    BAD_JSON = "bad_json"
    """A JSON line or JSON file does not parse, or parses to the wrong structure."""
    MISSING_FIELD = "missing_field"
    """A column, field or class folder the format requires is absent, or holds a value of the wrong type."""
    MISSING_FILE = "missing_file"
    """A row refers to an image file that does not exist."""
    UNREADABLE = "unreadable"
    """A file or container could not be read (I/O error, corrupt tar or Parquet)."""


_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


@dataclass(kw_only=True, frozen=True)
class SourceSpec:
    """One raw data source: its name, its on-disk format and where it lies.

    Container formats (`webdataset`, `parquet_pairs`, `jsonl_pairs`, `jsonl_text`, `coco_captions`,
    `karpathy`, `text_files`) accept either one file or a directory searched recursively for files with the
    format's suffix; folder formats (`image_folder`, `imagenet_folder`) take a directory. File and directory
    names starting with `.` are ignored.
    """

    name: str
    """Source name, written into every record and the quarantine table (e.g. "tuxpaint")."""
    format: str
    """Reader name, one of `preprocessing.sources.READERS`."""
    path: Path
    """File or directory holding the source."""
    image_column: str = "image"
    """`parquet_pairs`/`jsonl_pairs`: column with the image path (relative to the table file) or bytes."""
    caption_column: str = "caption"
    """`parquet_pairs`/`jsonl_pairs`, and the caption field of a `webdataset` sample's `.json` member."""
    text_field: str = "text"
    """`jsonl_text`: field holding the text."""
    split: str | None = None
    """`karpathy`: comma-separated split names to keep (e.g. "train,restval"); None keeps every split."""
    image_dir: str | None = None
    """`coco_captions`/`karpathy`: image directory, relative to the JSON file's directory unless absolute;
    None means the JSON file's directory."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not self.name:
            raise ValueError("SourceSpec.name must be non-empty")
        from preprocessing.sources import READERS  # the registry imports this module

        if self.format not in READERS:
            raise ValueError(f"source {self.name!r}: unknown format {self.format!r}; known: {', '.join(READERS)}")

    @property
    def root(self) -> Path:
        """Directory that `RawRecord.input_file` paths are relative to: `path` itself, or its parent for a file."""
        return self.path.parent if self.path.is_file() else self.path

    def relative(self, path: Path, root: str | None = None) -> str:
        """`path` relative to `root`, with forward slashes (may start with `..` for images outside `root`).

        Listing a large source calls this once per file: pass `root=str(spec.root)` to save a stat per call.
        A path spelled as the root plus a clean tail (the listing's own paths) is cut as a string.
        """
        root = str(self.root) if root is None else root
        text = os.fspath(path)
        if os.sep == "/" and text.startswith(root) and text[len(root) : len(root) + 1] == "/":
            tail = text[len(root) + 1 :]
            if tail and "//" not in tail and not _DOT_SEGMENT.search(tail):
                return tail
        return Path(os.path.relpath(path, root)).as_posix()

    def to_dict(self, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Plain dict for YAML/JSON configs, leaving out options at their defaults.

        Args:
            base_dir: When given, `path` is written relative to it.
        """
        data: dict[str, Any] = {"name": self.name, "format": self.format}
        data["path"] = Path(os.path.relpath(self.path, base_dir)).as_posix() if base_dir else str(self.path)
        for spec_field in fields(self):
            value = getattr(self, spec_field.name)
            if spec_field.name not in data and value != spec_field.default:
                data[spec_field.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> SourceSpec:
        """Inverse of `to_dict`; a relative `path` is resolved against `base_dir` when given.

        Raises:
            ValueError: On unknown keys or an unknown format.
        """
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"source {data.get('name')!r}: unknown option(s) {sorted(unknown)}")
        path = Path(data["path"])
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return cls(**{**data, "path": path})


@dataclass(kw_only=True, frozen=True)
class RawRecord:
    """One image, text or image-text pair as stored in its source, before any validation.

    A payload of None with `error` None means the source simply lacks it (a pair sample without a caption
    member, a null caption cell); validation must reject such a record like an empty payload.
    """

    source: str
    """`SourceSpec.name` of the source."""
    key: str
    """Unique within the source and stable across runs for an unchanged input file (see the module docstring)."""
    kind: RecordKind
    """"image", "text" or "pair"."""
    input_file: str
    """Path, relative to the source root, of the file the record was read from."""
    provenance: str
    """Where inside `input_file` the record lies, for people (tar members, line, row, annotation)."""
    image_bytes: bytes | None = None
    """Encoded image file exactly as stored."""
    text: bytes | None = None
    """Caption or text exactly as stored (JSON strings re-encoded as UTF-8); validation decodes it."""
    label: str | None = None
    """Class name, for class-folder sources."""
    error: str | None = None
    """A `RecordError` value when the record could not be read properly; the pipeline quarantines it."""
    error_detail: str = ""
    """Human-readable detail for `error`."""

    @property
    def num_bytes(self) -> int:
        """Size of the payloads carried, for the quarantine table."""
        return len(self.image_bytes or b"") + len(self.text or b"")
