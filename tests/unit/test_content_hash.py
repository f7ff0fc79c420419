"""Content-hash memo: an unchanged rerun reads no file, a changed file is re-hashed once, a touch keeps the key.

File reads are counted with a Python audit hook on `open` (`support.file_opens`), so the tests see what the code
really opens; the memo's own counters are checked against it. Without Ray the hashing runs in a
local thread pool of this process, so the hook sees every read.
"""

import hashlib
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.file_opens import count_opens

from preprocessing.content_hash import HashMemo, hash_files
from preprocessing.plan import hash_memo, plan_source
from preprocessing.sources import SourceSpec


@pytest.fixture
def source(tmp_path: Path) -> SourceSpec:
    root = tmp_path / "texts"
    for i in range(40):
        (root / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 4}" / f"f{i:03d}.txt").write_text(f"line {i}\n" * (i + 1))
    return SourceSpec(name="texts", format="text_files", path=str(root))


def plan_counting_opens(spec: SourceSpec, memo_root: Path) -> tuple[dict[str, str], list[str], HashMemo]:
    memo = hash_memo(memo_root, spec.name)
    with count_opens(spec.path) as opened:
        shards = {p.name: p.input_fingerprint for p in plan_source(spec, 8, memo)}
    return shards, opened, memo


def test_hashes_match_sha256_of_the_bytes(source: SourceSpec, tmp_path: Path):
    files = sorted(str(p) for p in Path(source.path).rglob("*.txt"))
    expected = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    assert hash_files(files) == expected
    assert HashMemo().sha256_of(files) == expected


def test_unchanged_rerun_reads_no_file(source: SourceSpec, tmp_path: Path):
    first, opened, memo = plan_counting_opens(source, tmp_path / "out")
    assert len(opened) == 40 and memo.stats.num_hashed == 40
    second, opened, memo = plan_counting_opens(source, tmp_path / "out")
    assert opened == [] and memo.stats.num_hashed == 0 and memo.stats.bytes_hashed == 0
    assert second == first


def test_changing_one_file_rehashes_exactly_that_file(source: SourceSpec, tmp_path: Path):
    first, _, _ = plan_counting_opens(source, tmp_path / "out")
    changed = Path(source.path) / "d1" / "f005.txt"
    changed.write_text("new content\n")
    second, opened, memo = plan_counting_opens(source, tmp_path / "out")
    assert opened == [str(changed)] and memo.stats.num_hashed == 1
    assert [name for name in first if first[name] != second[name]] == [
        p.name for p in plan_source(source, 8) if str(changed) in p.files
    ]


def test_touch_rereads_but_keeps_the_fingerprints(source: SourceSpec, tmp_path: Path):
    first, _, _ = plan_counting_opens(source, tmp_path / "out")
    touched = Path(source.path) / "d2" / "f010.txt"
    later = time.time_ns() + 5_000_000_000
    os.utime(touched, ns=(later, later))
    second, opened, _ = plan_counting_opens(source, tmp_path / "out")
    assert opened == [str(touched)] and second == first


def test_rewrite_that_restores_the_mtime_is_detected(source: SourceSpec, tmp_path: Path):
    plan_counting_opens(source, tmp_path / "out")
    target = Path(source.path) / "d3" / "f003.txt"
    before = target.stat()
    target.write_bytes(target.read_bytes().replace(b"3", b"4"))  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    _, opened, memo = plan_counting_opens(source, tmp_path / "out")
    assert opened == [str(target)]
    assert memo.entries[str(target)][1] == hashlib.sha256(target.read_bytes()).hexdigest()


def test_memo_drops_entries_of_deleted_files(source: SourceSpec, tmp_path: Path):
    plan_counting_opens(source, tmp_path / "out")
    gone = Path(source.path) / "d0" / "f004.txt"
    gone.unlink()
    _, opened, memo = plan_counting_opens(source, tmp_path / "out")
    assert opened == [] and memo.stats.num_pruned == 1
    on_disk = pq.read_table(memo.location).column("path").to_pylist()
    assert len(on_disk) == 39 and str(gone) not in on_disk


def plans_of(spec: SourceSpec, files_per_shard: int, memo: HashMemo | None = None) -> list[tuple[str, tuple, str]]:
    return [(p.name, p.files, p.input_fingerprint) for p in plan_source(spec, files_per_shard, memo)]


def test_plan_read_back_from_the_memo_equals_a_plan_computed_afresh(source: SourceSpec, tmp_path: Path):
    fresh = plans_of(source, 8)
    assert len(fresh) > 1 and sum(len(files) for _, files, _ in fresh) == 40
    assert plans_of(source, 8, hash_memo(tmp_path / "out", source.name)) == fresh
    memo = hash_memo(tmp_path / "out", source.name)
    assert memo.derived  # the plan was saved with the hashes
    assert plans_of(source, 8, memo) == fresh and memo.unchanged
    # Another shard size over the same unchanged files: computed, not read back.
    assert plans_of(source, 3, hash_memo(tmp_path / "out", source.name)) == plans_of(source, 3)


def test_saved_plan_is_dropped_when_the_listing_changes(source: SourceSpec, tmp_path: Path):
    plans_of(source, 8, hash_memo(tmp_path / "out", source.name))
    (Path(source.path) / "d0" / "f100.txt").write_text("a new file\n")
    (Path(source.path) / "d1" / "f001.txt").unlink()
    memo = hash_memo(tmp_path / "out", source.name)
    assert plans_of(source, 8, memo) == plans_of(source, 8) and not memo.unchanged
    assert plans_of(source, 8, hash_memo(tmp_path / "out", source.name)) == plans_of(source, 8)


def test_memo_of_another_layout_is_refused(source: SourceSpec, tmp_path: Path):
    location = tmp_path / "not_a_memo.parquet"
    pq.write_table(pa.table({"path": ["a"], "sha256": ["b"]}), location)
    with pytest.raises(ValueError, match="not a content-hash memo"):
        HashMemo.open(location)
