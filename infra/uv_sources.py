"""Print pip's package sources (index-url, extra-index-url, find-links) as flags for `uv pip install`.

`make install` installs with uv, which resolves the same versions as pip about ten times faster, but reads no
pip configuration: on a machine whose pip is pointed at a local mirror or a wheel folder (pip.conf or PIP_*
variables), uv would otherwise fetch everything from PyPI, or a different build of torch.
"""

import shlex
import subprocess
import sys

SOURCE_KEYS = ("index-url", "extra-index-url", "find-links")


def uv_flags(pip_config_list: str) -> list[str]:
    """`pip config list` lines (`scope.key='value'`) -> ["--key", value, ...]; values may hold several URLs."""
    flags: list[str] = []
    for line in pip_config_list.splitlines():
        key, sep, quoted = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if not sep or name not in SOURCE_KEYS:
            continue
        for value in shlex.split(quoted)[0].split() if quoted.strip() else []:
            pair = [f"--{name}", value]
            if name == "index-url" and "--index-url" in flags:
                continue  # the first scope pip lists wins, as in pip (environment before files)
            if not any(flags[i : i + 2] == pair for i in range(0, len(flags), 2)):
                flags += pair
    return flags


def main() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    print(shlex.join(uv_flags(listed)))


if __name__ == "__main__":
    main()
