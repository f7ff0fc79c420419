"""The dataset manifest (`manifest.json` at the output root): what pretraining reads to find its shards.

Top-level keys: `shards` (one entry per shard: name, file names, counts per kind, sha256 and size of each
file, the shard's input fingerprint), `sources` (per source: records in / out / quarantined and the input
fingerprints), `text_tokenizer` (`model_id`, `vocab_size`, `mask_id`), `visual_tokenizer` (`tokenizer_id`,
`num_codes`, `grid_size`, `img_size`, codebook usage), `views` (views per image, render version),
`code_version`, and `dataset_version` (a hash of all of the above except timings).
"""

import hashlib
import json

from preprocessing.shard_writer import ShardInfo


def shard_entry(info: ShardInfo) -> dict:
    return {
        "name": info.name,
        "parquet": f"{info.name}.parquet",
        "tar": f"{info.name}.tar",
        "counts": dict(info.num_per_kind),
        "num_records": info.num_records,
        "files": {name: {"sha256": sha, "bytes": size} for name, (sha, size) in info.files().items()},
        "fingerprint": info.fingerprint,
    }


def dataset_version(manifest: dict) -> str:
    """Content hash of the manifest (shard hashes, tokenizers, sources), independent of timings."""
    stable = {k: v for k, v in manifest.items() if k not in ("dataset_version", "timings")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
