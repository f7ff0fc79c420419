"""Content hashes of raw input files, computed once and remembered against cheap file metadata.

Content identity decides what changed: a shard's fingerprint hashes the sha256 of its files' bytes. Reading
every byte of a large corpus to find out that nothing changed costs days at corpus scale, so a `HashMemo`
remembers each file's sha256 together with its metadata (size, mtime_ns, ctime_ns, inode). A file whose
metadata is unchanged keeps its remembered hash (a `stat`, no read); any other file is read and hashed again,
so a touched-but-identical file gets the same hash, and hence the same cache keys, after one re-read.

ctime and the inode are part of the identity because no user tool sets them: a rewrite that restores the old
mtime (`cp -p`, `touch -d`, an editor's rename-over) still changes them and is re-hashed.

The memo never outlives the files it points to: it is rebuilt from the current listing on every call, so
entries of deleted, renamed or changed files are dropped, and it is written (atomically) only when it changed.

Misses are hashed in parallel: as Ray tasks (batches of files, at most 2x the cluster's CPUs in flight) when
Ray is initialised, else in a local thread pool (hashlib releases the GIL on large buffers). On a cluster the
Ray workers read the same paths as the driver, as the preprocessing tasks do.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from beit3_core.runtime.atomic import write_atomic

CHUNK_BYTES = 1 << 20
BATCH_BYTES = 64 << 20
"""Hash tasks take files until they hold this many bytes (or `BATCH_FILES` files): few tasks, even load."""
BATCH_FILES = 512

_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.int64()),
        ("sha256", pa.string()),
    ]
)

Identity = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode) of a file."""


@contextmanager
def gc_paused():
    """Listing millions of files allocates millions of small tuples and lists, none of them garbage; the cyclic
    collector would rescan all of them again and again (a third of an unchanged rerun's time on 50,000 files)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_batch(paths: list[str]) -> list[str]:
    """sha256 of each file, in order (the body of one Ray task)."""
    return [file_sha256(path) for path in paths]


@dataclass
class HashStats:
    num_files: int = 0
    num_hashed: int = 0
    """Files read and hashed (new, changed, or touched)."""
    bytes_hashed: int = 0
    num_pruned: int = 0
    """Memo entries dropped because their file is gone or changed."""


@dataclass
class HashMemo:
    """Absolute path -> (identity, sha256), loaded from and saved to one Parquet file (or kept in memory).

    The entries are kept as parallel lists in the order of the last call's paths: a rerun over the same listing
    compares whole lists (a C loop) instead of looking up each file.
    """

    location: Path | None = None
    paths: list[str] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    stats: HashStats = field(default_factory=HashStats)
    before_hashing: Callable[[], None] | None = None
    """Called once before any file is read (e.g. to start Ray only when there is something to hash)."""
    derived: dict[bytes, bytes] = field(default_factory=dict)
    """What callers computed from exactly these paths and hashes (e.g. a shard plan), saved with them; cleared
    whenever the paths or hashes change, so it never outlives what it was computed from."""
    unchanged: bool = False
    """Whether the last `sha256_of` found the saved listing and identities as they were (`derived` holds)."""

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None) -> HashMemo:
        memo = cls(Path(location) if location else None)
        if memo.location is not None and memo.location.is_file():
            with gc_paused():
                memo.paths, memo.identities, memo.shas, memo.derived = _read_entries(memo.location)
        return memo

    @property
    def entries(self) -> dict[str, tuple[Identity, str]]:
        return dict(zip(self.paths, zip(self.identities, self.shas, strict=True), strict=True))

    def sha256_of(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """sha256 of each file of `paths`, in order; only files whose identity changed are read.

        The memo then holds exactly these files (by absolute path) and is saved if anything differs from what was
        loaded.
        """
        paths, self.unchanged = list(paths), False
        if paths == self.paths:  # the same listing (hence absolute paths): one `stat` each, no lookups
            identities = [(s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in map(os.stat, paths)]
            if identities == self.identities:
                self.stats, self.unchanged = HashStats(num_files=len(paths)), True
                return list(self.shas)
            current = dict(zip(paths, identities, strict=True))
            keys = paths
        else:
            keys = [absolute_path(path) for path in paths]
            current = {}
            for key in keys:  # one `stat` per distinct file
                if key not in current:
                    st = os.stat(key)
                    current[key] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        entries = self.entries
        known = {p: entries[p][1] for p, identity in current.items() if p in entries and entries[p][0] == identity}
        num_kept = len(known)
        missing = [p for p in current if p not in known] if num_kept < len(current) else []
        if missing and self.before_hashing is not None:
            self.before_hashing()
        known.update(zip(missing, hash_files(missing, [current[p][0] for p in missing]), strict=True))
        self.stats = HashStats(
            num_files=len(current),
            num_hashed=len(missing),
            bytes_hashed=sum(current[p][0] for p in missing),
            num_pruned=len(entries) - num_kept,
        )
        self.paths, self.identities = list(current), list(current.values())
        self.shas = [known[p] for p in self.paths]
        self.derived = {}
        self.save()  # the listing, an identity or a hash differs from what was loaded
        return [known[key] for key in keys]

    def save(self) -> None:
        if self.location is None:
            return
        columns = [self.paths, *(list(c) for c in zip(*self.identities, strict=True)), self.shas]
        if not self.paths:
            columns = [[] for _ in _SCHEMA.names]
        arrays = [pa.array(c, t) for c, t in zip(columns, _SCHEMA.types, strict=True)]
        table = pa.Table.from_arrays(arrays, schema=_SCHEMA.with_metadata(self.derived))
        self.location.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.location, lambda f: pq.write_table(table, f))


def _read_entries(location: Path) -> tuple[list[str], list[Identity], list[str], dict[bytes, bytes]]:
    """(paths, identities, sha256s) in their saved order, and the derived values saved with them."""
    table = pq.read_table(location)
    if table.schema.remove_metadata() != _SCHEMA:
        raise ValueError(f"{location}: not a content-hash memo (schema {table.schema.remove_metadata()})")
    column = table.column
    identities = list(zip(*(column(name).to_pylist() for name in _SCHEMA.names[1:5]), strict=True))
    derived = dict(table.schema.metadata or {})
    return column("path").to_pylist(), identities, column("sha256").to_pylist(), derived


def absolute_path(path: str | os.PathLike[str]) -> str:
    """`os.path.abspath`, without its cost for a string that already is a normal absolute path."""
    if isinstance(path, str) and path.startswith("/") and "//" not in path and "/." not in path:
        if not path.endswith("/"):
            return path
    return os.path.abspath(path)


def hash_files(paths: list[str], sizes: list[int] | None = None) -> list[str]:
    """sha256 of each file, in order, hashed in parallel (Ray tasks when Ray is initialised, else threads)."""
    if not paths:
        return []
    batches = _batches(paths, sizes or [os.path.getsize(p) for p in paths])
    # Ray cannot be initialised unless imported; importing it only to ask costs a second.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from preprocessing.ray_tasks import run_tasks

        results = run_tasks(hash_batch, [(batch,) for batch in batches], {"num_cpus": 1})
    else:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(hash_batch, batches))
    return [sha for batch in results for sha in batch]


def _batches(paths: list[str], sizes: list[int]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    total = 0
    for path, size in zip(paths, sizes, strict=True):
        if batches[-1] and (total >= BATCH_BYTES or len(batches[-1]) >= BATCH_FILES):
            batches.append([])
            total = 0
        batches[-1].append(path)
        total += size
    return batches
