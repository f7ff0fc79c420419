"""Ingest on a large generated source: first run (hash every file) against an unchanged rerun (stat only).

Generates `--files` files of `--size` random bytes in an image-folder layout (100 files per folder), then
times the ingest step's computation (`flows.steps.ingest.source_fingerprints` with the content-hash memo) on
a local Ray started and warmed up before the timings: the first run, an unchanged rerun, a rerun after one
file changed, a rerun after one file was touched. Files hashed are the memo's own count (the tests in
`tests/unit/test_content_hash.py` check that count against real `open` calls).

    python benchmarks/ingest.py --files 50000 --size 65536 --root /tmp/ingest-bench

A freshly generated source sits in the page cache, so its first run hashes at memory speed, not at the speed of
the storage a real corpus is read from. `--drop-caches` (root on Linux) empties the page cache before the first
run, so that it reads from the disk; the reruns are timed as they come (file metadata stays cached).
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.settings import Settings, ensure_ray  # noqa: E402
from flows.steps.ingest import source_fingerprints  # noqa: E402
from preprocessing.sources import SourceSpec  # noqa: E402


def generate(root: Path, num_files: int, size: int) -> None:
    for i in range(num_files):
        folder = root / f"{i // 100:05d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.jpg").write_bytes(os.urandom(size))


def timed(spec: SourceSpec, memo_root: Path, settings: Settings) -> tuple[float, dict, dict]:
    """(wall seconds, hashing stats with the driver's CPU seconds, shard fingerprints) of one ingest."""
    stats: dict = {}
    start, cpu = time.perf_counter(), time.process_time()
    shards = source_fingerprints(spec, 1000, memo_root, settings, stats)
    stats["driver_cpu"] = time.process_time() - cpu
    return time.perf_counter() - start, stats, shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=65_536, help="bytes per file")
    parser.add_argument("--root", type=Path, default=Path("/tmp/beit3-ingest-bench"))
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before the first run")
    args = parser.parse_args()

    shutil.rmtree(args.root, ignore_errors=True)
    source = args.root / "source"
    start = time.perf_counter()
    generate(source, args.files, args.size)
    print(f"generated {args.files} files of {args.size} bytes in {time.perf_counter() - start:.1f} s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    settings = Settings()
    start = time.perf_counter()
    ensure_ray(settings)
    import ray

    ray.get([ray.remote(lambda: None).remote() for _ in range(4)])  # worker processes up before the timings
    print(f"ray start and first tasks: {time.perf_counter() - start:.1f} s")

    spec = SourceSpec(name="bench", format="image_folder", path=str(source))
    memo_root = args.root / "out"
    if args.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")  # page cache only: dentries and inodes stay
        print("page cache dropped: the first run reads the files from the disk")
    rows = [("first run", *timed(spec, memo_root, settings))]
    rows.append(("unchanged rerun", *timed(spec, memo_root, settings)))
    (source / "00007" / "0000712.jpg").write_bytes(os.urandom(args.size))
    rows.append(("one file changed", *timed(spec, memo_root, settings)))
    later = time.time_ns() + 10**9
    os.utime(source / "00011" / "0001100.jpg", ns=(later, later))
    rows.append(("one file touched", *timed(spec, memo_root, settings)))

    first = rows[0][1]
    print("| run | seconds | driver CPU s | files hashed | bytes hashed | vs first run | shards changed |")
    print("|---|---|---|---|---|---|---|")
    previous = rows[0][3]
    for name, seconds, stats, shards in rows:
        changed = sum(shards[k] != previous[k] for k in shards)
        previous = shards
        print(
            f"| {name} | {seconds:.2f} | {stats['driver_cpu']:.2f} | {stats['num_hashed']} | {stats['bytes_hashed']} |"
            f" {100 * seconds / first:.1f}% | {changed} |"
        )
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
