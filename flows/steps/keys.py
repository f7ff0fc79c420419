"""Cache keys: a step reruns exactly when one of its inputs, its resolved config or its code changes.

Every key is `<step>-<hash>` over three things, never over mtimes, paths of temporary files or run ids:
- the *content* fingerprints of the step's inputs (raw file hashes, the dataset version of the shards, the
  sha256 of a checkpoint, the results of the benchmarks);
- the step's resolved config (including the run directory, where its outputs go);
- the code version: a hash of the library code that shapes the output plus the step's own module.

The same functions serve Prefect (`cache_key_fn`) and `beit3 status` (which recomputes keys to find stale steps).
"""

import hashlib
import json
from pathlib import Path

from preprocessing.content_hash import file_sha256  # noqa: F401  (the steps' file hash)

REPO_ROOT = Path(__file__).resolve().parents[2]


def digest(*parts: object, length: int = 20) -> str:
    """Stable hash of JSON-able parts (paths and other objects hash by their str)."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def code_hash(*entries: str) -> str:
    """Hash of the `.py` files under the given repository folders or files (relative names and bytes)."""
    h = hashlib.sha256()
    for entry in entries:
        path = REPO_ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(file.relative_to(REPO_ROOT).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


def step_key(step: str, *parts: object) -> str:
    """`<step>-<hash of parts>`; also the file name of Prefect's cache record, so only safe characters."""
    return f"{step}-{digest(*parts)}"
