"""Pretraining shard format: one schema shared by the preprocessing writer and the training reader.

A shard is a pair of files with one record (image, text or image-text pair) per row/sample:

- `NAME.parquet`: every column of `SHARD_SCHEMA` (metadata, XLM-R text ids, view parameters, visual tokens).
- `NAME.tar`: webdataset layout (spec orchestration.md section 4): per sample `WDSKEY.jpg` (stored JPEG, see
  `beit3_core.data.views`) for images and pairs, and `WDSKEY.json` holding the same columns as the Parquet
  row. Members of one sample are adjacent and sorted by extension, as `webdataset.TarWriter` writes them.

webdataset splits a member name at its first dot into key and extension, so the record key `source/key` is
escaped by `encode_wds_key` into `[A-Za-z0-9_-]` only; the original key stays in the JSON.

The reader uses plain `tarfile` so the training loader does not need webdataset. `tarfile` silently stops at
a corrupt header that is not the first one, so the reader also checks that the archive ends with the
end-of-archive zero blocks right after the last member; a truncated or corrupt tar is an error, never a short
shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from os import PathLike
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "COLUMNS",
    "FORMAT_VERSION",
    "IMAGE_BYTES",
    "KINDS",
    "SHARD_SCHEMA",
    "ShardFormatError",
    "decode_wds_key",
    "encode_wds_key",
    "index_webdataset_shard",
    "iter_webdataset_shard",
    "normalize_record",
    "read_indexed_sample",
    "read_parquet_shard",
    "records_to_table",
    "sample_json_bytes",
]

FORMAT_VERSION = "1"
KINDS = ("image", "text", "pair")
# Record field holding the stored JPEG bytes; it goes to the tar only, not to the Parquet file.
IMAGE_BYTES = "image_bytes"
_BOS_ID, _EOS_ID = 0, 2
_UINT16_MAX = 65535
_BLOCK = 512

# "element" is the Parquet list item name, so a read-back schema equals this one exactly.
_TEXT_IDS_TYPE = pa.list_(pa.field("element", pa.int32(), nullable=False))
VIEW_TYPE = pa.struct(
    [
        pa.field("top", pa.int32(), nullable=False),
        pa.field("left", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("flip", pa.bool_(), nullable=False),
        pa.field("tokens", pa.list_(pa.field("element", pa.uint16(), nullable=False)), nullable=False),
    ]
)

SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # "source/key", unique in the data set
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # one of KINDS
        pa.field("caption", pa.string()),  # null for images
        pa.field("text_ids", _TEXT_IDS_TYPE),  # XLM-R ids, <s> ... </s>; null for images
        pa.field("image_sha256", pa.string()),  # of the stored JPEG bytes; null for texts
        pa.field("stored_height", pa.int32()),  # null for texts
        pa.field("stored_width", pa.int32()),
        pa.field("views", pa.list_(pa.field("element", VIEW_TYPE, nullable=False))),  # null for texts
        pa.field("label", pa.string()),
        pa.field("provenance", pa.string(), nullable=False),
        pa.field("input_file", pa.string(), nullable=False),
    ],
    metadata={"beit3.shard_format": FORMAT_VERSION},
)
COLUMNS = tuple(SHARD_SCHEMA.names)
_IMAGE_COLUMNS = ("image_sha256", "stored_height", "stored_width", "views")
_TEXT_COLUMNS = ("caption", "text_ids")
_VIEW_INTS = ("top", "left", "height", "width")
_REQUIRED = tuple(field.name for field in SHARD_SCHEMA if not field.nullable)


class ShardFormatError(ValueError):
    """A shard file or record does not follow the format; the message names the file (and member)."""


def encode_wds_key(key: str) -> str:
    """Escape a record key into a webdataset-safe member stem: `[A-Za-z0-9-]` kept, anything else `_xx`.

    Escaping is per UTF-8 byte and `_` itself is escaped, so the mapping is injective and reversible.
    """
    return "".join(
        chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b == 45) else f"_{b:02x}"
        for b in key.encode("utf-8")
    )


def decode_wds_key(stem: str) -> str:
    """Inverse of `encode_wds_key`."""
    return re.sub(rb"_([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), stem.encode("ascii")).decode("utf-8")


def _int_list(values: Any, what: str, low: int, high: int) -> list[int]:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-D integer sequence")
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"{what} values must lie in [{low}, {high}]")
    return [int(v) for v in array]


def _normalize_view(view: Any, height: int, width: int) -> dict[str, Any]:
    if not isinstance(view, dict):  # ViewParams or any object with the attributes, plus tokens
        view = {name: getattr(view, name) for name in (*_VIEW_INTS, "flip", "tokens")}
    out: dict[str, Any] = {name: int(view[name]) for name in _VIEW_INTS}
    out["flip"] = bool(view["flip"])
    out["tokens"] = _int_list(view["tokens"], "view tokens", 0, _UINT16_MAX)
    if out["height"] <= 0 or out["width"] <= 0 or out["top"] < 0 or out["left"] < 0:
        raise ValueError(f"empty or negative view {out['top'], out['left'], out['height'], out['width']}")
    if out["top"] + out["height"] > height or out["left"] + out["width"] > width:
        raise ValueError(f"view {out['top'], out['left'], out['height'], out['width']} exceeds {height}x{width}")
    return out


def normalize_record(record: dict[str, Any]) -> dict[str, Any]:
    """Check one record and return its columns as plain Python values (what both readers return).

    Args:
        record: The columns of `SHARD_SCHEMA` (nullable ones may be omitted, meaning None) and, for images
            and pairs, `image_bytes`, which is not returned. Token and id lists may be numpy arrays.

    Returns:
        A dict with exactly `COLUMNS` as keys.

    Raises:
        ValueError: Missing or inconsistent fields (the message names the key).
    """
    key = record.get("key")
    try:
        out = {name: record[name] if name in _REQUIRED else record.get(name) for name in COLUMNS}
        for name in _REQUIRED:
            if not isinstance(out[name], str) or not out[name]:
                raise ValueError(f"{name} must be a non-empty string")
        kind = out["kind"]
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(key, str) or not key.startswith(f"{out['source']}/"):
            raise ValueError(f"key must be a string 'source/...' with source {out['source']!r}")
        has_image, has_text = kind in ("image", "pair"), kind in ("text", "pair")
        for name in _TEXT_COLUMNS:
            if (out[name] is None) == has_text:
                raise ValueError(f"{name} must be {'set' if has_text else 'None'} for kind {kind!r}")
        for name in _IMAGE_COLUMNS:
            if (out[name] is None) == has_image:
                raise ValueError(f"{name} must be {'set' if has_image else 'None'} for kind {kind!r}")
        if (record.get(IMAGE_BYTES) is None) == has_image:
            raise ValueError(f"{IMAGE_BYTES} must be {'set' if has_image else 'None'} for kind {kind!r}")
        if has_text:
            ids = _int_list(out["text_ids"], "text_ids", 0, 2**31 - 1)
            if len(ids) < 2 or ids[0] != _BOS_ID or ids[-1] != _EOS_ID:
                raise ValueError("text_ids must start with <s> (0) and end with </s> (2)")
            out["text_ids"] = ids
        if has_image:
            if hashlib.sha256(record[IMAGE_BYTES]).hexdigest() != out["image_sha256"]:
                raise ValueError("image_sha256 does not match image_bytes")
            height, width = int(out["stored_height"]), int(out["stored_width"])
            out["stored_height"], out["stored_width"] = height, width
            out["views"] = [_normalize_view(v, height, width) for v in out["views"]]
            if not out["views"]:
                raise ValueError("an image needs at least one view")
            if len({len(v["tokens"]) for v in out["views"]}) != 1 or not out["views"][0]["tokens"]:
                raise ValueError("every view needs the same, non-zero number of tokens")
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"record {key!r}: {type(err).__name__}: {err}") from None
    return out


def records_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Normalized rows (`normalize_record` output) -> a table with `SHARD_SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def sample_json_bytes(row: dict[str, Any]) -> bytes:
    """The `.json` member for one normalized row: compact, sorted keys, UTF-8."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_parquet_shard(path: str | PathLike) -> pa.Table:
    """Read a shard's Parquet file and check its schema.

    Raises:
        ShardFormatError: The file is unreadable or its schema differs from `SHARD_SCHEMA`.
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ShardFormatError(f"{path}: unreadable Parquet shard: {err}") from err
    if not table.schema.equals(SHARD_SCHEMA, check_metadata=False):
        expected = {f.name: f for f in SHARD_SCHEMA}
        found = {f.name: f for f in table.schema}
        diffs = [
            f"{name}: expected {expected.get(name)}, found {found.get(name)}"
            for name in dict.fromkeys([*expected, *found])
            if expected.get(name) is None or found.get(name) is None or not expected[name].equals(found[name])
        ] or ["column order differs"]
        raise ShardFormatError(f"{path}: schema mismatch: " + "; ".join(diffs))
    version = (table.schema.metadata or {}).get(b"beit3.shard_format", b"").decode()
    if version != FORMAT_VERSION:
        raise ShardFormatError(f"{path}: shard format version {version!r}, expected {FORMAT_VERSION!r}")
    return table


def _check_end_of_archive(tar: tarfile.TarFile, path: str | PathLike, end: int) -> None:
    """Require two zero blocks at `end`, the first byte after the last member's padded data."""
    fileobj = tar.fileobj
    fileobj.seek(end)
    trailer = fileobj.read(2 * _BLOCK)
    if len(trailer) < 2 * _BLOCK:
        raise ShardFormatError(f"{path}: truncated tar (no end-of-archive marker after offset {end})")
    if trailer.count(0) != len(trailer):
        raise ShardFormatError(f"{path}: corrupt tar header at offset {end}")


def _make_sample(path: str | PathLike, stem: str, members: dict[str, bytes]) -> dict[str, Any]:
    where = f"{path}: member {stem}"
    if set(members) - {"jpg", "json"} or "json" not in members:
        raise ShardFormatError(f"{where}: expected .json (+ .jpg), found {sorted(members)}")
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"{where}.json: bad JSON: {err}") from err
    if not isinstance(meta, dict) or set(meta) != set(COLUMNS):
        raise ShardFormatError(f"{where}.json: keys differ from the shard columns")
    if encode_wds_key(str(meta["key"])) != stem:
        raise ShardFormatError(f"{where}.json: key {meta['key']!r} does not match the member name")
    image_bytes = members.get("jpg")
    if (image_bytes is None) != (meta["kind"] == "text"):
        raise ShardFormatError(f"{where}: kind {meta['kind']!r} with{'out' if image_bytes is None else ''} .jpg")
    if image_bytes is not None and hashlib.sha256(image_bytes).hexdigest() != meta["image_sha256"]:
        raise ShardFormatError(f"{where}.jpg: sha256 differs from image_sha256")
    return {"key": meta["key"], "kind": meta["kind"], "image_bytes": image_bytes, "meta": meta}


def _tar_members(path: str | PathLike, read_data: bool) -> Iterator[tuple[str, str, int, int, bytes | None]]:
    """Each member of a shard's tar as `(stem, ext, data offset, size, data or None)`, checked to be a flat
    webdataset file; after the last one, the end-of-archive marker is checked. Without `read_data` only the
    512-byte headers are read (unbuffered, so nothing beyond them)."""
    end, member_name = 0, "<header>"
    try:
        with open(path, "rb", buffering=-1 if read_data else 0) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                member_name = info.name
                if not info.isfile() or "." not in info.name or "/" in info.name:
                    raise ShardFormatError(f"{path}: member {info.name}: not a flat webdataset file")
                stem, ext = info.name.split(".", 1)
                data = tar.extractfile(info).read() if read_data else None
                if data is not None and len(data) != info.size:
                    raise ShardFormatError(f"{path}: member {info.name}: truncated data")
                end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
                yield stem, ext, info.offset_data, info.size, data
            member_name = "<end of archive>"
            _check_end_of_archive(tar, path, end)
    except FileNotFoundError:
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardFormatError(f"{path}: member {member_name}: corrupt or truncated tar: {err}") from err


def iter_webdataset_shard(path: str | PathLike) -> Iterator[dict[str, Any]]:
    """Yield the samples of a shard's tar in file order.

    Each sample is `{"key", "kind", "image_bytes" (None for texts), "meta"}` where `meta` holds every column
    (as `normalize_record` returns it) and the image bytes are checked against `image_sha256`.

    Raises:
        ShardFormatError: Truncated or corrupt tar, unexpected members, bad JSON or a hash mismatch; the
            message names the shard and, where known, the member. Samples are streamed, so the error can
            come after earlier samples were yielded (a trailing corruption is found at the end).
    """
    stem, members = None, {}
    seen: set[str] = set()
    for name_stem, ext, _, _, data in _tar_members(path, read_data=True):
        if name_stem != stem:
            if name_stem in seen:
                raise ShardFormatError(f"{path}: member {name_stem}.{ext}: key repeated or samples not grouped")
            seen.add(name_stem)
            if stem is not None:
                yield _make_sample(path, stem, members)
            members = {}
        if ext in members:
            raise ShardFormatError(f"{path}: member {name_stem}.{ext}: duplicate member")
        stem, members[ext] = name_stem, data
    if stem is not None:
        yield _make_sample(path, stem, members)


def index_webdataset_shard(path: str | PathLike) -> list[tuple[str, tuple[tuple[str, int, int], ...]]]:
    """The samples of a shard's tar as `(stem, ((ext, data offset, size), ...))`, in file order.

    Reads only the member headers, which lets a reader seek to any sample with `read_indexed_sample`.

    Raises:
        ShardFormatError: Truncated or corrupt tar, or members that are not grouped webdataset samples.
    """
    samples: list[tuple[str, list[tuple[str, int, int]]]] = []
    for stem, ext, offset, size, _ in _tar_members(path, read_data=False):
        if not samples or samples[-1][0] != stem:
            samples.append((stem, []))
        samples[-1][1].append((ext, offset, size))
    if len({stem for stem, _ in samples}) != len(samples):
        raise ShardFormatError(f"{path}: a key is repeated or samples are not grouped")
    return [(stem, tuple(members)) for stem, members in samples]


def read_indexed_sample(fd: int, path: str | PathLike, stem: str, members: tuple[tuple[str, int, int], ...]) -> dict:
    """One sample, read with `os.pread` from an open file descriptor at the offsets of its index entry; the
    same checks and the same dict as `iter_webdataset_shard`."""
    data = {}
    for ext, offset, size in members:
        data[ext] = os.pread(fd, size, offset)
        if len(data[ext]) != size:
            raise ShardFormatError(f"{path}: member {stem}.{ext}: truncated data")
    return _make_sample(path, stem, data)
