"""Write pretraining shards atomically and reproducibly, and tell finished shards from partial ones.

One shard = `NAME.parquet` + `NAME.tar` in the format of `beit3_core.data.shard_format`, then a
`NAME.done.json` sidecar. Following spec orchestration.md section 4 ("shards" row), each file is written to a
temporary name starting with `_tmp.` in the destination directory (ignored by `pyarrow.dataset` and by
`remove_stale_temporaries`) and moved into place with `os.replace`, which is atomic within one filesystem.

The sidecar is the completion marker: it is deleted before a rewrite starts and written last, so a run killed
at any point leaves either no shard files or shard files without a sidecar, which `is_shard_complete`
reports as incomplete. Readers and manifests must therefore go through the sidecar, never through the mere
presence of a `.tar`.

The tar is written as `webdataset.TarWriter` writes it (the layout the spec prescribes: members grouped by
key, sorted by extension) with a fixed mtime, owner and mode; the Parquet file with fixed writer settings. The
same records in the same order therefore give byte-identical files with the same library versions, so a
shard's sha256 can serve as a cache key.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from beit3_core.data.shard_format import (
    FORMAT_VERSION,
    IMAGE_BYTES,
    KINDS,
    encode_wds_key,
    normalize_record,
    records_to_table,
    sample_json_bytes,
)
from beit3_core.runtime.atomic import TMP_PREFIX, fsync_dir, temp_path, write_atomic
from preprocessing.content_hash import file_sha256

__all__ = [
    "MANIFEST_NAME",
    "SIZES_NAME",
    "TMP_PREFIX",
    "ShardInfo",
    "is_shard_complete",
    "read_manifest",
    "read_shard_info",
    "remove_stale_temporaries",
    "write_manifest",
    "write_shard",
    "write_sizes",
]

MANIFEST_NAME = "manifest.json"
SIZES_NAME = "sizes.json"
_ROW_GROUP_SIZE = 256


@dataclass(frozen=True)
class ShardInfo:
    """What the `NAME.done.json` sidecar of a finished shard records."""

    name: str
    fingerprint: str  # caller's digest of everything the shard was built from (inputs, tokenizer, code)
    num_records: int
    num_per_kind: dict[str, int]  # every kind in KINDS, zeros included
    parquet_sha256: str
    parquet_bytes: int
    tar_sha256: str
    tar_bytes: int

    def files(self) -> dict[str, tuple[str, int]]:
        """File name -> (sha256, size in bytes)."""
        return {
            f"{self.name}.parquet": (self.parquet_sha256, self.parquet_bytes),
            f"{self.name}.tar": (self.tar_sha256, self.tar_bytes),
        }


def _check_shard_name(shard_name: str) -> None:
    if not shard_name or shard_name[0] in "._" or "/" in shard_name or os.sep in shard_name:
        raise ValueError(f"shard name must be a plain file stem not starting with '.' or '_', got {shard_name!r}")


def _sidecar_path(out_dir: Path, shard_name: str) -> Path:
    return out_dir / f"{shard_name}.done.json"


def _write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    fsync_dir(path.parent)


def _write_tar(f: Any, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """The webdataset tar: per sample `<key>.jpg` (if any) then `<key>.json`, as `webdataset.TarWriter` writes
    them (default tar format, streamed, mtime 0, mode 0444, owner beit3), without importing webdataset, whose
    package import loads torch into every CPU-stage worker."""
    with tarfile.open(fileobj=f, mode="w|") as tar:
        for row, record in zip(rows, records, strict=True):
            key = encode_wds_key(row["key"])
            members = {"json": sample_json_bytes(row)}
            if record.get(IMAGE_BYTES) is not None:
                members["jpg"] = bytes(record[IMAGE_BYTES])
            for extension in sorted(members):
                data = members[extension]
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 0.0, 0o444
                info.uname = info.gname = "beit3"
                tar.addfile(info, io.BytesIO(data))


def write_shard(
    records: list[dict[str, Any]],
    out_dir: str | PathLike,
    shard_name: str,
    fingerprint: str,
    on_stage: Callable[[str], None] | None = None,
) -> ShardInfo:
    """Write `shard_name.parquet`, `shard_name.tar` and, last, the `shard_name.done.json` sidecar.

    Args:
        records: Records as `beit3_core.data.shard_format.normalize_record` accepts them (columns plus
            `image_bytes` for images and pairs), in the order they should appear; keys must be unique.
        out_dir: Destination directory, created if missing.
        shard_name: File stem, e.g. `train-000012`.
        fingerprint: Caller's digest of the shard's inputs; `is_shard_complete` compares it.
        on_stage: Called with "parquet_written" (Parquet temporary complete), "tar_written" (tar temporary
            complete) and "files_replaced" (both files in place, no sidecar yet); for progress logging. An
            exception it raises aborts the write like any other failure.

    Returns:
        The shard's sidecar contents.

    Raises:
        ValueError: Bad shard name, an invalid record or a repeated key. Nothing is written.
    """
    _check_shard_name(shard_name)
    # An empty shard is valid: every record of its input files may have been quarantined, and the shard must
    # still exist (with its fingerprint) so that reruns skip it and the manifest accounts for its inputs.
    rows = [normalize_record(r) for r in records]
    repeated = [k for k, n in Counter(r["key"] for r in rows).items() if n > 1]
    if repeated:
        raise ValueError(f"shard {shard_name}: repeated keys {repeated[:5]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet_path, tar_path = out / f"{shard_name}.parquet", out / f"{shard_name}.tar"
    # An old sidecar must not vouch for files that are about to be replaced.
    _sidecar_path(out, shard_name).unlink(missing_ok=True)
    fsync_dir(out)

    stage = on_stage or (lambda _: None)
    table = records_to_table(rows)
    parquet_tmp, tar_tmp = temp_path(parquet_path), temp_path(tar_path)
    try:
        with open(parquet_tmp, "xb") as f:
            pq.write_table(table, f, row_group_size=_ROW_GROUP_SIZE, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        stage("parquet_written")
        with open(tar_tmp, "xb") as f:
            _write_tar(f, rows, records)
            f.flush()
            os.fsync(f.fileno())
        stage("tar_written")
        info = ShardInfo(
            name=shard_name,
            fingerprint=fingerprint,
            num_records=len(rows),
            num_per_kind={kind: sum(r["kind"] == kind for r in rows) for kind in KINDS},
            parquet_sha256=file_sha256(parquet_tmp),
            parquet_bytes=parquet_tmp.stat().st_size,
            tar_sha256=file_sha256(tar_tmp),
            tar_bytes=tar_tmp.stat().st_size,
        )
        os.replace(parquet_tmp, parquet_path)
        os.replace(tar_tmp, tar_path)
        fsync_dir(out)
        stage("files_replaced")
    finally:
        parquet_tmp.unlink(missing_ok=True)
        tar_tmp.unlink(missing_ok=True)
    _write_json_atomic(_sidecar_path(out, shard_name), {"format_version": FORMAT_VERSION, **asdict(info)})
    return info


def read_shard_info(out_dir: str | PathLike, shard_name: str) -> ShardInfo:
    """Read a shard's sidecar.

    Raises:
        FileNotFoundError: No sidecar (the shard is missing or was interrupted).
        ValueError: The sidecar is not valid JSON or has other fields.
    """
    path = _sidecar_path(Path(out_dir), shard_name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format_version") != FORMAT_VERSION:
            raise ValueError("unsupported format_version")
        return ShardInfo(**data)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: bad sidecar: {err}") from err


def is_shard_complete(out_dir: str | PathLike, shard_name: str, fingerprint: str, verify_hashes: bool = True) -> bool:
    """True if the shard's sidecar exists, its fingerprint equals `fingerprint` and both files match it.

    Args:
        out_dir: Shard directory.
        shard_name: File stem.
        fingerprint: Expected fingerprint; a different one means the inputs changed and the shard is stale.
        verify_hashes: Re-hash both files. Without it only presence and sizes are checked, which is enough to
            skip finished shards on resume but does not catch bit rot.
    """
    try:
        info = read_shard_info(out_dir, shard_name)
    except (FileNotFoundError, ValueError):
        return False
    if info.fingerprint != fingerprint:
        return False
    for file_name, (sha256, size) in info.files().items():
        path = Path(out_dir) / file_name
        if not path.is_file() or path.stat().st_size != size:
            return False
        if verify_hashes and file_sha256(path) != sha256:
            return False
    return True


def remove_stale_temporaries(out_dir: str | PathLike) -> list[Path]:
    """Delete `_tmp.*` files left by killed writers and return their paths.

    Call it only while no writer is active on `out_dir` (e.g. at the start of a sharding run): it cannot tell
    a dead writer's temporary from a live one's.
    """
    out = Path(out_dir)
    if not out.is_dir():
        return []
    removed = sorted(p for p in out.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_file())
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def write_manifest(out_dir: str | PathLike, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` atomically (sorted keys, so equal manifests give equal bytes) and return its path."""
    path = Path(out_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(path, manifest)
    return path


def read_manifest(out_dir: str | PathLike) -> dict[str, Any]:
    """Read `manifest.json` from `out_dir`."""
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))


def write_sizes(out_dir: str | PathLike, shards: list[ShardInfo]) -> Path:
    """Write `sizes.json` (tar file name -> sample count), the open_clip convention for counting samples."""
    path = Path(out_dir) / SIZES_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(path, {f"{info.name}.tar": info.num_records for info in shards})
    return path
