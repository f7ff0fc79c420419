"""Readers shared by the scorers of `evaluation.score`: every problem becomes a `ScoreFileError` naming the file."""

import json
from pathlib import Path
from typing import Any, TextIO

from evaluation.metrics.ids import check_same_ids


class ScoreFileError(ValueError):
    """A prediction or annotation file is unreadable, malformed, or does not match the other files."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def open_text(path: Path) -> TextIO:
    """Opens a UTF-8 text file."""
    try:
        return path.open(encoding="utf-8")
    except OSError as error:
        raise ScoreFileError(path, f"cannot read file ({error.strerror or error})") from error


def read_json(path: Path) -> Any:
    """Parses a whole JSON file."""
    with open_text(path) as file:
        return parse_json(path, file.read())


def parse_json(path: Path, text: str) -> Any:
    """Parses JSON text read from `path`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ScoreFileError(path, f"bad JSON ({error})") from error


def read_json_records(path: Path) -> list[Any]:
    """Reads a JSON list or JSON Lines (NLVR2 ships JSON Lines under a .json name)."""
    with open_text(path) as file:
        text = file.read()
    if text.lstrip().startswith("["):
        return parse_json(path, text)
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ScoreFileError(path, f"bad JSON on line {line_no} ({error})") from error
    return records


def records_under(path: Path, data: Any, *, key: str) -> list[Any]:
    """The non-empty list stored under `key` of a JSON object."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ScoreFileError(path, f"expected a JSON object with a list under {key!r}")
    if not data[key]:
        raise ScoreFileError(path, f"the {key!r} list is empty")
    return data[key]


def require_fields(path: Path, entry: Any, fields: tuple[str, ...], index: int, what: str = "entry") -> None:
    """Checks that record `index` is a JSON object holding `fields`."""
    if not isinstance(entry, dict):
        raise ScoreFileError(path, f"{what} {index} is not a JSON object")
    missing = [field for field in fields if field not in entry]
    if missing:
        raise ScoreFileError(path, f"{what} {index} lacks {', '.join(repr(f) for f in missing)}")


def unique_by(path: Path, entries: list[dict[str, Any]], field: str) -> dict[Any, dict[str, Any]]:
    """Entries keyed by `field`, whose values must be unique integers or strings."""
    by_id: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry[field], int | str) or isinstance(entry[field], bool):
            raise ScoreFileError(path, f"{field} {entry[field]!r} is not an integer or a string")
        if entry[field] in by_id:
            raise ScoreFileError(path, f"duplicate {field} {entry[field]!r}")
        by_id[entry[field]] = entry
    return by_id


def check_ids(path: Path, expected: Any, given: Any, what: str) -> None:
    """Id-set check of `evaluation.metrics.ids.check_same_ids`, reported against `path`."""
    try:
        check_same_ids(expected, given, what=what)
    except ValueError as error:
        raise ScoreFileError(path, str(error)) from error
