"""Cached step results: where they are kept, and why a cached result never outlives the files it names.

Prefect keeps a task's cached result in the result storage of the process that runs it; left to its default that
is `PREFECT_HOME/storage`, which for a worker running a deployment is the worker's home, not the run directory.
Every step therefore gets an explicit `result_storage` (`BEIT3_RESULT_STORAGE`, by default
`<run_dir>/.state/prefect/results`), the same in every mode.

A cached result is only worth its files: a step's output lists the files it produced under `files`. Before
Prefect looks a key up, `checked_key` reads the cached result stored under it; when a file it names is gone, the
result is marked expired in the storage itself, so Prefect treats the key as absent, runs the step and
overwrites the record. The check needs nothing but the cached result, so it holds when the run directory (and
its ledger) was removed while the results were kept elsewhere, or on a machine where those files do not exist.
Only existence is checked: a file replaced by another of the same name counts as present.
"""

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.settings import Settings

logger = logging.getLogger(__name__)

KeyFn = Callable[[Any, dict], str | None]


def missing_files(output: Any) -> list[str]:
    """The files a step output names (`files`) that do not exist here."""
    files = output.get("files") if isinstance(output, dict) else None
    return [f for f in files or [] if f and not Path(f).exists()]


def result_storage(settings: Settings, run_dir: Path) -> str | Path:
    """The steps' result storage; a block slug is loaded once here, so a wrong slug fails before any step runs."""
    storage = settings.results_storage(run_dir)
    if isinstance(storage, str):
        from prefect.blocks.core import Block

        try:
            Block.load(storage)
        except ValueError as error:
            raise ValueError(f"BEIT3_RESULT_STORAGE={storage!r}: {error}") from error
    return storage


def checked_key(key_fn: KeyFn) -> KeyFn:
    """`key_fn` as a Prefect `cache_key_fn` that first expires a cached result whose files are gone."""

    @functools.wraps(key_fn)
    def key(ctx, params: dict) -> str | None:
        value = key_fn(ctx, params)
        if value and ctx is not None and ctx.result_store is not None:
            expire_if_stale(ctx.result_store, value, ctx.task_run.name if ctx.task_run else value)
        return value

    return key


def expire_if_stale(store, key: str, label: str) -> bool:
    """Mark the record under `key` expired when a file its result names is gone; True if it was."""
    if not store.exists(key):
        return False
    record = store.read(key)
    missing = missing_files(record.result)
    if not missing:
        return False
    logger.warning("step %s: %d file(s) of its cached result are gone, e.g. %s", label, len(missing), missing[0])
    # Expired rather than deleted: storage blocks can only read and write, and Prefect's lookup
    # (`ResultStore.exists`) treats an expired record as absent, so the step runs and overwrites it.
    record.metadata.expiration = datetime.now(UTC) - timedelta(seconds=1)
    store.persist_result_record(record)
    return True
