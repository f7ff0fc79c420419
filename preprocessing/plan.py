"""Shard planning and content fingerprints: which input files make up each shard, and what a shard depends on.

Container files (tars, Parquet/JSONL/JSON tables with the images they reference) each make one shard, named
after the file. Folder sources hash each file's relative path into a fixed number of buckets, so changing,
adding or removing one file touches exactly one shard. Fingerprints hash file contents, never mtimes.
"""

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from preprocessing.sources import SourceSpec, input_groups

FOLDER_FORMATS = ("image_folder", "imagenet_folder", "text_files")
_CODE_ROOTS = ("preprocessing", "beit3_core/data", "beit3_core/text_tokenizer.py")


@dataclass(frozen=True)
class ShardPlan:
    name: str
    source: SourceSpec
    files: tuple[Path, ...]
    input_fingerprint: str
    """sha256 over (relative path, content sha256) of every input file of the shard."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(spec: SourceSpec, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{spec.name}|{spec.format}".encode())
    for path in sorted(files):
        digest.update(f"{spec.relative(path)}={file_sha256(path)};".encode())
    return digest.hexdigest()


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def plan_source(spec: SourceSpec, files_per_shard: int) -> list[ShardPlan]:
    """The shards of one source, in a stable order."""
    groups = input_groups(spec)
    if spec.format in FOLDER_FORMATS:
        files = [f for group in groups for f in group]
        num_buckets = max(1, 2 ** math.ceil(math.log2(max(1, len(files)) / files_per_shard)) if files else 1)
        buckets: dict[int, list[Path]] = {}
        for path in files:
            buckets.setdefault(_stable_hash(spec.relative(path)) % num_buckets, []).append(path)
        return [
            ShardPlan(f"{spec.name}-b{b:05d}of{num_buckets:05d}", spec, tuple(fs), _fingerprint(spec, fs))
            for b, fs in sorted(buckets.items())
        ]
    plans = []
    for group in groups:
        primary = spec.relative(group[0])
        name = f"{spec.name}-{hashlib.sha1(primary.encode()).hexdigest()[:10]}"
        plans.append(ShardPlan(name, spec, tuple(group), _fingerprint(spec, list(group))))
    return plans


def code_version() -> str:
    """Hash of the code that shapes shard contents (preprocessing, views, shard format, text tokenizer)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in _CODE_ROOTS:
        path = root / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
