"""A two-node Ray cluster on one machine that tests start and stop by themselves.

Each node is a `ray start --block` in its own session, so its process group holds it and everything it spawned
(gcs_server, raylet, workers), and stopping signals exactly those groups. `ray stop` is never called: it kills
every Ray on the machine, including another test's local Ray running beside this one (pytest-xdist) and any
Ray the developer has running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
COMMON = ["--block", "--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address: str) -> int:
    count = (
        "import ray; ray.init(log_to_driver=False, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", count], env=ENV | {"RAY_ADDRESS": address}, capture_output=True, text=True, timeout=60
    )
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines else 0


def group_alive(pgid: int) -> bool:
    """A member of the process group that is not a zombie."""
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


class TwoNodeRay:
    """`start()` a head and a worker node (one CPU each) on 127.0.0.1 at a free port; `stop()` kills their process
    groups and removes the session folder."""

    def __init__(self, log_dir: Path, timeout_s: float = 120.0):
        self.log_dir, self.timeout_s = log_dir, timeout_s
        self.address = f"127.0.0.1:{_free_port()}"
        # Ray's unix socket paths must stay under 107 bytes: a short folder of its own under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="b3ray.", dir="/tmp")
        self.groups: list[int] = []

    def _spawn(self, name: str, *args: str) -> None:
        ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the node writes it until stopped
        process = subprocess.Popen(
            [ray, "start", *args, *COMMON], env=ENV, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.groups.append(process.pid)

    def _wait_for(self, nodes: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while _alive_nodes(self.address) < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nodes} Ray node(s) not up after {self.timeout_s} s; logs in {self.log_dir}")
            time.sleep(0.5)

    def start(self) -> str:
        port = self.address.rsplit(":", 1)[1]
        head = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"]
        self._spawn("ray-head", *head, f"--temp-dir={self.temp_dir}")
        self._wait_for(1)
        self._spawn("ray-worker", f"--address={self.address}")
        self._wait_for(2)
        return self.address

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 10.0)):
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while any(group_alive(g) for g in self.groups) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not any(group_alive(g) for g in self.groups):
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
