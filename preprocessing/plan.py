"""Shard planning and content fingerprints: which input files make up each shard, and what a shard depends on.

Container files (tars, Parquet/JSONL/JSON tables with the images they reference) each make one shard, named
after the file. Folder sources hash each file's relative path into a fixed number of buckets, so changing,
adding or removing one file touches exactly one shard. Fingerprints hash file contents, never mtimes; metadata
only decides which files need re-reading.
"""

import hashlib
import json
import math
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

from preprocessing.content_hash import HashMemo, gc_paused
from preprocessing.sources import SourceSpec, get_reader
from preprocessing.sources.reader import list_files

FOLDER_FORMATS = ("image_folder", "imagenet_folder", "text_files")
HASH_MEMO_DIR = "_work/hashes"
"""Under a preprocessing output: one content-hash memo per source, shared by ingest and preprocessing."""
_CODE_ROOTS = ("preprocessing", "beit3_core/data", "beit3_core/text_tokenizer.py")
_FOLDER_PLAN_VERSION = 1
"""Part of the key of a folder plan saved in the memo: change it with the bucket or fingerprint computation."""


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


def plan_source(spec: SourceSpec, files_per_shard: int, memo: HashMemo | None = None) -> list[ShardPlan]:
    """The shards of one source, in a stable order.

    File contents are hashed in parallel; with a `memo` (see `preprocessing.content_hash`) only files whose
    metadata changed since the memo's last use are read.
    """
    with gc_paused():
        return _plan_source(spec, files_per_shard, memo)


def _plan_source(spec: SourceSpec, files_per_shard: int, memo: HashMemo | None = None) -> list[ShardPlan]:
    reader = get_reader(spec.format)
    if spec.format in FOLDER_FORMATS and reader.referenced_files is None:
        return _plan_folder(spec, files_per_shard, list_files(spec, reader.suffixes), memo or HashMemo())
    listed = reader.relative_input_groups(spec)
    groups = [group for _, group in listed]
    relative = {group[0]: rel for rel, group in listed}
    root = str(spec.root)
    for group in groups:  # files that table rows refer to
        for path in group[1:]:
            if path not in relative:
                relative[path] = spec.relative(path, root)
    paths = list(relative)
    content = dict(zip(paths, (memo or HashMemo()).sha256_of(paths), strict=True))
    plans = []
    for group in groups:
        name = f"{spec.name}-{hashlib.sha1(relative[group[0]].encode()).hexdigest()[:10]}"
        plans.append(ShardPlan(name, spec, tuple(group), _fingerprint(spec, list(group), relative, content)))
    return plans


def _plan_folder(
    spec: SourceSpec, files_per_shard: int, listed: list[tuple[str, str]], memo: HashMemo
) -> list[ShardPlan]:
    """One file per record: each file goes to the bucket of its relative path's hash.

    Per-file work is all an unchanged rerun of a large folder costs, so it runs as comprehensions over parallel
    lists, and the memo keeps the bucket of each file and the fingerprint of each bucket: when the listing and
    every file's identity are as they were, the plan is read back instead of recomputed. `listed` is sorted by
    relative path, so each bucket's files are too (the order the fingerprint hashes).
    """
    relative = [rel for rel, _ in listed]
    paths = [path for _, path in listed]
    shas = memo.sha256_of(paths)
    num_buckets = max(1, 2 ** math.ceil(math.log2(max(1, len(paths)) / files_per_shard)) if paths else 1)
    key = f"folder-plan-v{_FOLDER_PLAN_VERSION}|{spec.name}|{spec.format}|{spec.root}|{num_buckets}".encode()
    saved = memo.derived.get(key) if memo.unchanged else None
    if saved is not None:
        fingerprints = json.loads(saved)
        bucket_of = array("i", memo.derived[key + b"|buckets"])
    else:
        sha1, from_bytes = hashlib.sha1, int.from_bytes
        # The first 8 bytes of the relative path's sha1, big-endian: the shards of a folder depend on this.
        bucket_of = array("i", [from_bytes(sha1(rel.encode()).digest()[:8], "big") % num_buckets for rel in relative])
    buckets: list[list[int]] = [[] for _ in range(num_buckets)]
    for i, b in enumerate(bucket_of):
        buckets[b].append(i)
    if saved is None:
        fingerprints = {}
        for b, members in enumerate(buckets):
            if members:
                digest = hashlib.sha256(f"{spec.name}|{spec.format}".encode())
                digest.update("".join([f"{relative[i]}={shas[i]};" for i in members]).encode())
                fingerprints[str(b)] = digest.hexdigest()
        memo.derived = {key: json.dumps(fingerprints).encode(), key + b"|buckets": bucket_of.tobytes()}
        memo.save()
    return [
        ShardPlan(
            f"{spec.name}-b{b:05d}of{num_buckets:05d}", spec, tuple([paths[i] for i in members]), fingerprints[str(b)]
        )
        for b, members in enumerate(buckets)
        if members
    ]


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
