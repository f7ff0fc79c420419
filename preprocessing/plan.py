"""Shard planning and content fingerprints: which input files make up each shard, and what a shard depends on.

Container files (tars, Parquet/JSONL/JSON tables with the images they reference) each make one shard, named
after the file. Folder sources hash each file's relative path into a fixed number of buckets, so changing,
adding or removing one file touches exactly one shard. Fingerprints hash file contents, never mtimes; metadata
only decides which files need re-reading.
"""

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from preprocessing.content_hash import HashMemo, gc_paused
from preprocessing.sources import SourceSpec, get_reader

FOLDER_FORMATS = ("image_folder", "imagenet_folder", "text_files")
HASH_MEMO_DIR = "_work/hashes"
"""Under a preprocessing output: one content-hash memo per source, shared by ingest and preprocessing."""
_CODE_ROOTS = ("preprocessing", "beit3_core/data", "beit3_core/text_tokenizer.py")


@dataclass(frozen=True)
class ShardPlan:
    name: str
    source: SourceSpec
    files: tuple[str, ...]
    """Input file paths (strings: one per raw file, and a `Path` costs more than its `stat`)."""
    input_fingerprint: str
    """sha256 over (relative path, content sha256) of every input file of the shard."""


def _fingerprint(spec: SourceSpec, files: list[str], relative: dict[str, str], content: dict[str, str]) -> str:
    digest = hashlib.sha256(f"{spec.name}|{spec.format}".encode())
    digest.update("".join(f"{rel}={content[path]};" for rel, path in sorted((relative[p], p) for p in files)).encode())
    return digest.hexdigest()


def hash_memo(output: str | os.PathLike[str], source: str) -> HashMemo:
    """The content-hash memo of one source under a preprocessing output folder."""
    return HashMemo.open(Path(output) / HASH_MEMO_DIR / f"{source}.parquet")


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def plan_source(spec: SourceSpec, files_per_shard: int, memo: HashMemo | None = None) -> list[ShardPlan]:
    """The shards of one source, in a stable order.

    File contents are hashed in parallel; with a `memo` (see `preprocessing.content_hash`) only files whose
    metadata changed since the memo's last use are read.
    """
    with gc_paused():
        return _plan_source(spec, files_per_shard, memo)


def _plan_source(spec: SourceSpec, files_per_shard: int, memo: HashMemo | None = None) -> list[ShardPlan]:
    listed = get_reader(spec.format).relative_input_groups(spec)
    groups = [group for _, group in listed]
    relative = {group[0]: rel for rel, group in listed}
    root = str(spec.root)
    for group in groups:  # files that table rows refer to
        for path in group[1:]:
            if path not in relative:
                relative[path] = spec.relative(path, root)
    paths = list(relative)
    content = dict(zip(paths, (memo or HashMemo()).sha256_of(paths), strict=True))
    if spec.format in FOLDER_FORMATS:
        files = [f for group in groups for f in group]
        num_buckets = max(1, 2 ** math.ceil(math.log2(max(1, len(files)) / files_per_shard)) if files else 1)
        buckets: list[list[str]] = [[] for _ in range(num_buckets)]
        for path in files:
            buckets[_stable_hash(relative[path]) % num_buckets].append(path)
        return [
            ShardPlan(
                f"{spec.name}-b{b:05d}of{num_buckets:05d}", spec, tuple(fs), _fingerprint(spec, fs, relative, content)
            )
            for b, fs in enumerate(buckets)
            if fs
        ]
    plans = []
    for group in groups:
        name = f"{spec.name}-{hashlib.sha1(relative[group[0]].encode()).hexdigest()[:10]}"
        plans.append(ShardPlan(name, spec, tuple(group), _fingerprint(spec, list(group), relative, content)))
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
