"""Atomic file writes: a temporary `_tmp.` name in the destination folder, fsync, then `os.replace`.

`os.replace` is atomic within one filesystem, so a reader sees either the old file or the whole new one; the
`_tmp.` prefix keeps half-written files out of `pyarrow.dataset` listings (spec orchestration.md, section 4).
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_PREFIX = "_tmp."
"""Name prefix of temporary files; `shard_writer.remove_stale_temporaries` deletes leftovers."""


def temp_path(final: Path) -> Path:
    # A random suffix keeps two writers of the same file (e.g. a retry racing a zombie) from sharing a file.
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.{secrets.token_hex(4)}")


def fsync_dir(directory: Path) -> None:
    # Makes the renames durable across a power loss; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: Path, write: Callable[[Any], None]) -> None:
    """Call `write(fileobj)` on a `_tmp.` file next to `final`, fsync it and move it to `final`."""
    temp = temp_path(final)
    try:
        with open(temp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
