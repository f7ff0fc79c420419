"""Atomic file writes: a temporary `_tmp.` name in the destination folder, fsync, then `os.replace`.

`os.replace` is atomic within one filesystem, so a reader sees either the old file or the whole new one; the
`_tmp.` prefix keeps half-written files out of `pyarrow.dataset` listings (spec orchestration.md, section 4).
"""

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path next to `final` for writers that take a path (Parquet, safetensors, `torch.save`); on a
    clean exit the file written there is fsynced and replaces `final`, on an error it is removed."""
    final = Path(final)
    temp = temp_path(final)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


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


def write_bytes_atomic(final: Path, data: bytes) -> None:
    write_atomic(Path(final), lambda f: f.write(data))


def write_text_atomic(final: Path, text: str) -> None:
    write_atomic(Path(final), lambda f: f.write(text.encode()))


def copy_atomic(source: Path, final: Path) -> None:
    """Copy `source` to `final` so that readers of `final` see the old file or the whole copy."""
    import shutil

    with open(source, "rb") as src:
        write_atomic(Path(final), lambda f: shutil.copyfileobj(src, f, 1 << 20))
