"""Count the files this process opens under a folder, with a Python audit hook on `open`.

An audit hook cannot be removed, so one hook is installed on first use and records only while a
`count_opens` block is active.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_opened: list[str] = []
_watched: list[str] = []
_installed: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _watched and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        if path.startswith(_watched[0]):
            _opened.append(path)


@contextlib.contextmanager
def count_opens(folder: str | Path) -> Iterator[list[str]]:
    """Yields a list that fills with the paths opened under `folder` inside the block (this process only)."""
    if not _installed:
        sys.addaudithook(_audit)
        _installed.append(True)
    _opened.clear()
    _watched[:] = [str(folder)]
    opened: list[str] = []
    try:
        yield opened
    finally:
        _watched.clear()
        opened.extend(_opened)
