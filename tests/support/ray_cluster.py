"""A two-node Ray on one machine, started and stopped by `infra/local_stack.sh` with `BEIT3_STACK_SERVICES=ray`.

The script runs each node in its own session and stops exactly those process groups; `ray stop` is never called,
since it kills every Ray on the machine, including another test's local Ray running beside this one
(pytest-xdist) and any Ray the developer has running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STACK = Path(__file__).resolve().parents[2] / "infra" / "local_stack.sh"


def group_alive(pgid: int) -> bool:
    """A member of the process group that is not a zombie."""
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


class TwoNodeRay:
    """`start()` the script's head and worker node (one CPU each) on 127.0.0.1; `stop()` them (idempotent)."""

    def __init__(self, state: Path):
        self.state = state
        self.env = os.environ | {"PYTHON": sys.executable, "BEIT3_STACK_SERVICES": "ray"}
        self.address = ""

    def _stack(self, command: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(STACK), command, str(self.state)], capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def start(self) -> str:
        started = self._stack("start", 240)
        assert started.returncode == 0, started.stderr[-3000:]
        exports = (self.state / "env").read_text().splitlines()
        values = dict(line.removeprefix("export ").split("=", 1) for line in exports)
        self.address = values["RAY_ADDRESS"]
        return self.address

    def stop(self) -> None:
        groups = [int(p.read_text()) for p in (self.state / "pids").glob("*.pid")]
        stopped = self._stack("stop", 60)
        assert stopped.returncode == 0, stopped.stderr
        assert not [g for g in groups if group_alive(g)]
