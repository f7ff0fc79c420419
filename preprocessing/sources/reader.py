"""The reader contract shared by every format, and helpers for rows that refer to image files.

A format is described by its *primary files* (the files records are read from: a tar, a JSONL file, one
image of a folder) and, for table formats, the image files each primary file refers to. Everything else
(listing inputs, reading a subset of them) is derived here once, so the formats only implement
`read_file`.

Sharding contract for the pipeline: `input_groups` lists each primary file followed by the files its
records also read. Keep a group inside one shard, and hash the whole group for caching, so that editing a
referenced image re-runs the shard whose records embed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = [
    "Reader",
    "caption_bytes",
    "find_file_names",
    "find_files",
    "list_files",
    "load_image_ref",
    "resolve_image_ref",
]

ReadFile = Callable[[SourceSpec, Path], Iterator[RawRecord]]
ReferencedFiles = Callable[[SourceSpec, Path], list[Path]]


def find_files(spec: SourceSpec, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `spec.path` whose name ends with one of `suffixes` (case-insensitive), sorted.

    A `spec.path` naming a file is returned as is, whatever its suffix: the user asked for it.

    Raises:
        FileNotFoundError: If `spec.path` does not exist (a configuration error, not a data error).
    """
    return [Path(path) for path in find_file_names(spec, suffixes)]


def find_file_names(spec: SourceSpec, suffixes: tuple[str, ...]) -> list[str]:
    """`find_files` as absolute path strings: a listing of millions of files is dominated by per-`Path` overhead."""
    return [path for _, path in list_files(spec, suffixes)]


def list_files(spec: SourceSpec, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path relative to `spec.root` with forward slashes, absolute path) of each file `find_files` finds, in
    its order: the relative path of a folder is computed once, not once per file."""
    if spec.path.is_file():
        return [(spec.path.name, os.path.abspath(spec.path))]
    if not spec.path.is_dir():
        raise FileNotFoundError(f"source {spec.name!r}: {spec.path} does not exist")
    base = os.path.abspath(spec.path)  # normalised: no trailing "/", so "dir/name" needs no os.path.join
    found: list[tuple[str, str]] = []
    folders = [(base, "")]  # (absolute path, relative path + "/"), walked depth first
    while folders:
        folder, prefix = folders.pop()
        names = []
        with os.scandir(folder) as entries:  # an unreadable folder raises, naming it: nothing is skipped silently
            for entry in entries:
                if entry.name[0] == ".":
                    continue
                if entry.is_dir():  # d_type from the listing: no `stat` per entry
                    if not entry.is_symlink():  # as os.walk: linked folders are not followed
                        folders.append((entry.path, prefix + entry.name + "/"))
                elif entry.name.lower().endswith(suffixes):
                    names.append(entry.name)
        # Comprehensions and plain concatenation: per-file work is what a listing of millions costs.
        found += zip([prefix + name for name in names], [f"{folder}/{name}" for name in names], strict=True)
    # Sorting on the relative POSIX path makes record order independent of the file system's listing order.
    found.sort()
    return found


@dataclass(frozen=True)
class Reader:
    """One source format: how to find its primary files and read records from one of them."""

    format: str
    """Registry name of the format."""
    suffixes: tuple[str, ...]
    """Lower-case file-name endings of primary files, used when `SourceSpec.path` is a directory."""
    read_file: ReadFile
    """Yields the records of one primary file in a stable order; never raises on malformed content."""
    referenced_files: ReferencedFiles | None = None
    """Existing files (other than itself) that the records of one primary file read, for table formats."""

    def primary_files(self, spec: SourceSpec) -> list[Path]:
        """The files records are read from, in reading order."""
        return find_files(spec, self.suffixes)

    def input_groups(self, spec: SourceSpec) -> list[list[str]]:
        """Each primary file followed by the files its records refer to (see the module docstring), as
        absolute path strings (a folder source of millions of images lists one string per file)."""
        return [group for _, group in self.relative_input_groups(spec)]

    def relative_input_groups(self, spec: SourceSpec) -> list[tuple[str, list[str]]]:
        """`input_groups`, each with its primary file's path relative to `spec.root`."""
        listed = list_files(spec, self.suffixes)
        if self.referenced_files is None:
            return [(relative, [path]) for relative, path in listed]
        refs = self.referenced_files
        return [(relative, [path, *map(str, refs(spec, Path(path)))]) for relative, path in listed]

    def list_input_files(self, spec: SourceSpec) -> list[Path]:
        """Every file whose content the records depend on, without duplicates, in group order.

        Referenced files that do not exist are left out; their records carry `RecordError.MISSING_FILE`.
        """
        seen: dict[str, str] = {}
        for group in self.input_groups(spec):
            for path in group:
                seen.setdefault(os.path.abspath(path), path)
        return [Path(path) for path in seen.values()]

    def iter_records(self, spec: SourceSpec) -> Iterator[RawRecord]:
        """Every record of the source."""
        for path in self.primary_files(spec):
            yield from self.read_file(spec, path)

    def iter_records_of_files(self, spec: SourceSpec, files: Iterable[str | os.PathLike[str]]) -> Iterator[RawRecord]:
        """The records whose `input_file` is among `files`, in the source's reading order.

        Args:
            spec: The source.
            files: A subset of `list_input_files(spec)`, as paths or as paths relative to `spec.root`.
                Referenced image files in it select nothing by themselves: the record belongs to the table
                file that names the image.
        """
        wanted = {os.path.abspath(spec.root / path) for path in files}
        for path in find_file_names(spec, self.suffixes):
            if os.path.abspath(path) in wanted:
                yield from self.read_file(spec, Path(path))


def caption_bytes(value: object, column: str) -> tuple[bytes | None, str]:
    """A caption cell as raw bytes: `(bytes, "")`, `(None, "")` for null, or `(None, detail)` for a bad type.

    JSON strings may hold lone surrogates (`"\\ud800"`); `surrogatepass` keeps them as invalid UTF-8 bytes
    so that text validation rejects the record as `not_utf8` instead of this reader raising.
    """
    if value is None:
        return None, ""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass"), ""
    if isinstance(value, bytes):
        return value, ""
    return None, f"{column!r} holds {type(value).__name__}, expected a string"


def resolve_image_ref(base_dir: Path, value: object) -> Path | None:
    """The file an image cell names, or None when the cell is not a non-empty path string."""
    if isinstance(value, dict):  # Hugging Face `Image` feature layout: {"bytes": ..., "path": ...}
        value = None if isinstance(value.get("bytes"), bytes) else value.get("path")
    if not isinstance(value, str) or not value:
        return None
    return base_dir / value


def load_image_ref(
    spec: SourceSpec, base_dir: Path, value: object, column: str
) -> tuple[bytes | None, RecordError | None, str]:
    """Reads the image an image cell names (a path relative to `base_dir`) or holds (bytes).

    Returns:
        `(image_bytes, error, detail)`; `image_bytes` is None for a null cell (no error) and on errors.
    """
    if value is None:
        return None, None, ""
    if isinstance(value, bytes):
        return value, None, ""
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        return value["bytes"], None, ""
    path = resolve_image_ref(base_dir, value)
    if path is None:
        return None, RecordError.MISSING_FIELD, f"{column!r} holds {type(value).__name__}, not a file path or bytes"
    if not path.is_file():
        return None, RecordError.MISSING_FILE, f"image {spec.relative(path)} not found"
    try:
        return path.read_bytes(), None, ""
    except OSError as err:
        return None, RecordError.UNREADABLE, f"image {spec.relative(path)}: {err}"
