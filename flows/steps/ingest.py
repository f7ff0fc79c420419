"""Ingest step: check that one raw source is there and fingerprint its files by content (one task per source)."""

from prefect import task

from flows.steps.keys import code_hash, digest, step_key
from preprocessing.plan import code_version, plan_source
from preprocessing.sources import SourceSpec


def source_fingerprints(spec: SourceSpec, files_per_shard: int) -> dict[str, str]:
    """Shard name -> sha256 over the (relative path, content hash) of its input files."""
    if not spec.path.exists():
        raise FileNotFoundError(f"source {spec.name!r}: {spec.path} does not exist")
    shards = {plan.name: plan.input_fingerprint for plan in plan_source(spec, files_per_shard)}
    if not shards:
        raise ValueError(f"source {spec.name!r}: no {spec.format} input files under {spec.path}")
    return shards


def ingest_key_of(spec: SourceSpec, files_per_shard: int, shards: dict[str, str]) -> str:
    code = code_version() + code_hash("flows/steps/ingest.py")
    return step_key(f"ingest-{spec.name}", spec.to_dict(), files_per_shard, shards, code)


def ingest_key(_ctx, params: dict) -> str | None:
    try:
        shards = source_fingerprints(params["spec"], params["files_per_shard"])
    except (OSError, ValueError):
        return None  # no key: the task body raises the same error, retries, and is reported
    return ingest_key_of(params["spec"], params["files_per_shard"], shards)


@task(cache_key_fn=ingest_key, retries=2, retry_delay_seconds=[2, 10])
def ingest(spec: SourceSpec, files_per_shard: int) -> dict:
    """I/O only (listing and hashing raw files), so it retries: raw data often lives on network storage."""
    shards = source_fingerprints(spec, files_per_shard)
    return {
        "source": spec.name,
        "path": str(spec.path),
        "shards": shards,
        "fingerprint": digest(shards),
        "key": ingest_key_of(spec, files_per_shard, shards),
    }
