"""`webdataset`: image-text pairs in tar shards laid out as img2dataset writes them.

img2dataset (rom1504/img2dataset `writer.py`) stores each sample as tar members `KEY.jpg` (or `.png`,
`.webp`), `KEY.txt` with the caption and `KEY.json` with metadata including `caption`. As in webdataset, the
sample key is the member path up to the first dot of its file name and the rest is the extension.

Members are grouped by key over the whole tar, not only when adjacent: a tar written without
`TarWriter` may interleave samples, and grouping only consecutive members would split them (the failure
reported for Ray's `read_webdataset`, ray-project/ray#44068). Only headers are read up front; each
sample's members are read when it is yielded.

One record per sample, of kind "pair". The caption comes from `KEY.txt` when present, else from the
`caption_column` field of `KEY.json`. A sample without an image or a caption is still yielded with that
payload None, so validation quarantines it instead of it vanishing.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from preprocessing.sources.reader import Reader, caption_bytes
from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = ["IMAGE_EXTENSIONS", "READER", "split_member_name"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Image member extensions, in the order of preference when a sample holds several."""


def split_member_name(name: str) -> tuple[str, str]:
    """Splits a tar member name into (sample key, lower-case extension); the extension is "" without a dot.

    Example:
        >>> split_member_name("shard/000010003.meta.json")
        ('shard/000010003', 'meta.json')
    """
    directory, _, filename = name.rpartition("/")
    stem, _, extension = filename.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _caption(
    spec: SourceSpec, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]
) -> tuple[bytes | None, RecordError | None, str]:
    """The caption bytes of one sample, or the error that prevented reading it, with its detail."""
    if "txt" in members:
        return _read_member(tar, members["txt"]), None, ""
    if "json" not in members:
        return None, None, ""
    try:
        meta = json.loads(_read_member(tar, members["json"]))
    except ValueError as err:
        return None, RecordError.BAD_JSON, f"{members['json'].name}: {err}"
    if not isinstance(meta, dict):
        return None, RecordError.BAD_JSON, f"{members['json'].name}: expected a JSON object"
    text, detail = caption_bytes(meta.get(spec.caption_column), spec.caption_column)
    return text, (RecordError.MISSING_FIELD if detail else None), detail


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None, "only regular-file members are grouped"
    return handle.read()


def _read_sample(
    spec: SourceSpec, rel: str, tar: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo]
) -> RawRecord:
    extensions = ",".join(sorted(members))
    base = {"source": spec.name, "key": f"{rel}#{key}", "kind": "pair", "input_file": rel}
    base["provenance"] = f"tar members {key}.{{{extensions}}}"
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    try:
        image = _read_member(tar, members[image_ext]) if image_ext else None
        text, error, detail = _caption(spec, tar, members)
    except (tarfile.TarError, OSError, EOFError) as err:  # a member cut short by a truncated tar
        return RawRecord(**base, error=RecordError.UNREADABLE, error_detail=f"{type(err).__name__}: {err}")
    return RawRecord(**base, image_bytes=image, text=text, error=error, error_detail=detail)


def read_tar(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one pair record per sample key of the tar at `path`, in order of first appearance."""
    rel = spec.relative(path)
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError) as err:
        yield RawRecord(
            source=spec.name,
            key=f"{rel}#!tar",
            kind="pair",
            input_file=rel,
            provenance="whole tar",
            error=RecordError.UNREADABLE,
            error_detail=f"{type(err).__name__}: {err}",
        )
        return
    with tar:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        tail_error = ""
        try:
            for member in tar:
                key, extension = split_member_name(member.name)
                # Directories and extension-less members belong to no sample in the webdataset layout.
                if member.isfile() and extension:
                    samples.setdefault(key, {})[extension] = member
        except (tarfile.TarError, OSError, EOFError) as err:
            # Keep the samples whose headers were read; the damaged tail becomes one quarantined record.
            tail_error = f"{type(err).__name__}: {err}"
        for key, members in samples.items():
            yield _read_sample(spec, rel, tar, key, members)
    if tail_error:
        yield RawRecord(
            source=spec.name,
            key=f"{rel}#!tail",
            kind="pair",
            input_file=rel,
            provenance="tar headers after the last readable one",
            error=RecordError.UNREADABLE,
            error_detail=tail_error,
        )


READER = Reader(format="webdataset", suffixes=(".tar", ".tar.gz", ".tgz"), read_file=read_tar)
