"""Ingest step: check that one raw source is there and fingerprint its files by content (one task per source).

Content hashes are remembered per source under the preprocessing output (`preprocessing.content_hash`), so an
unchanged rerun lists and stats the files and reads none; new or changed files are hashed in parallel on Ray.
The cache-key function does the one computation and hands its result to the task body, which Prefect calls
right after it in the same process; the body recomputes only when called without its key function.
"""

import json
import threading
from dataclasses import asdict
from pathlib import Path

from prefect import task

from flows.settings import Settings, ensure_ray
from flows.steps.keys import code_hash, digest, step_key
from preprocessing.content_hash import HashMemo
from preprocessing.plan import code_version, hash_memo, plan_source
from preprocessing.sources import SourceSpec

_handoff: dict[str, tuple[dict[str, str], dict]] = {}
"""Fingerprints computed by `ingest_key`, taken by the `ingest` body of the same call."""
_handoff_lock = threading.Lock()


def source_fingerprints(
    spec: SourceSpec,
    files_per_shard: int,
    memo_root: str | Path | None = None,
    settings: Settings | None = None,
    stats: dict | None = None,
) -> dict[str, str]:
    """Shard name -> sha256 over the (relative path, content hash) of its input files.

    `memo_root`: the preprocessing output whose content-hash memo to use (None: hash every file). With
    `settings`, files that need hashing are hashed on Ray (started only then). `stats` receives the counts of
    files listed and hashed.
    """
    if not spec.path.exists():
        raise FileNotFoundError(f"source {spec.name!r}: {spec.path} does not exist")
    memo = hash_memo(memo_root, spec.name) if memo_root else HashMemo()
    if settings is not None:
        memo.before_hashing = lambda: ensure_ray(settings)
    shards = {plan.name: plan.input_fingerprint for plan in plan_source(spec, files_per_shard, memo)}
    if stats is not None:
        stats.update(asdict(memo.stats))
    if not shards:
        raise ValueError(f"source {spec.name!r}: no {spec.format} input files under {spec.path}")
    return shards


def ingest_key_of(spec: SourceSpec, files_per_shard: int, shards: dict[str, str]) -> str:
    code = code_version() + code_hash("flows/steps/ingest.py")
    return step_key(f"ingest-{spec.name}", spec.to_dict(), files_per_shard, shards, code)


def _call_id(spec: SourceSpec, files_per_shard: int, memo_root: str | None) -> str:
    return json.dumps([spec.to_dict(), files_per_shard, str(memo_root)], sort_keys=True, default=str)


def ingest_key(_ctx, params: dict) -> str | None:
    spec, files_per_shard, memo_root = params["spec"], params["files_per_shard"], params.get("memo_root")
    stats: dict = {}
    try:
        shards = source_fingerprints(spec, files_per_shard, memo_root, params.get("settings"), stats)
    except (OSError, ValueError):
        return None  # no key: the task body raises the same error, retries, and is reported
    with _handoff_lock:
        _handoff[_call_id(spec, files_per_shard, memo_root)] = shards, stats
    return ingest_key_of(spec, files_per_shard, shards)


@task(cache_key_fn=ingest_key, retries=2, retry_delay_seconds=[2, 10])
def ingest(
    spec: SourceSpec, files_per_shard: int, memo_root: str | None = None, settings: Settings | None = None
) -> dict:
    """I/O only (listing and hashing raw files), so it retries: raw data often lives on network storage."""
    with _handoff_lock:
        shards, stats = _handoff.pop(_call_id(spec, files_per_shard, memo_root), (None, {}))
    if shards is None:
        shards = source_fingerprints(spec, files_per_shard, memo_root, settings, stats)
    return {
        "source": spec.name,
        "path": str(spec.path),
        "shards": shards,
        "fingerprint": digest(shards),
        "hashing": stats,
        "key": ingest_key_of(spec, files_per_shard, shards),
    }
