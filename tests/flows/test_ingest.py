"""The ingest step's key function and body share one computation; new files are hashed on Ray, not in the driver.

Opens are counted in this (the driver's) process with `support.file_opens`: Ray tasks read the files in
worker processes, so a first run that opens nothing here yet remembers the right sha256 of every file hashed
them on Ray.
"""

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
from support.file_opens import count_opens

from flows.settings import Settings
from flows.steps.ingest import ingest, ingest_key
from preprocessing.plan import HASH_MEMO_DIR
from preprocessing.sources import SourceSpec


def memo_of(tmp_path: Path) -> dict[str, str]:
    memo = pq.read_table(tmp_path / "out" / HASH_MEMO_DIR / "texts.parquet").to_pydict()
    return dict(zip(memo["path"], memo["sha256"], strict=True))


def test_key_and_body_share_one_hashing_on_ray(tmp_path: Path, ray_local):
    root = tmp_path / "texts"
    root.mkdir()
    for i in range(30):
        (root / f"f{i:02d}.txt").write_text(f"document {i}\n" * (i + 1))
    spec = SourceSpec(name="texts", format="text_files", path=str(root))
    params = {"spec": spec, "files_per_shard": 8, "memo_root": str(tmp_path / "out"), "settings": Settings()}

    with count_opens(root) as opened:
        key = ingest_key(None, params)
        out = ingest.fn(**params)
    assert opened == []  # hashed by Ray workers; the body reused the key function's result
    assert out["key"] == key and out["hashing"]["num_hashed"] == 30
    expected = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}
    assert memo_of(tmp_path) == expected

    (root / "f07.txt").write_text("edited\n")
    changed_key = ingest_key(None, params)
    changed = ingest.fn(**params)
    assert changed["hashing"]["num_hashed"] == 1 and changed["hashing"]["num_files"] == 30
    assert memo_of(tmp_path)[str(root / "f07.txt")] == hashlib.sha256(b"edited\n").hexdigest()
    assert changed_key != key and changed["key"] == changed_key
    assert sum(changed["shards"][name] != out["shards"][name] for name in out["shards"]) == 1
