"""Fault injection for the recovery tests: a real SIGKILL of one Ray Train worker, once per marker file."""

import os
import signal
from pathlib import Path


def kill_once(fault: dict, rank: int, step: int) -> None:
    """SIGKILL this process if `fault` ({"kill_rank", "at_step", "marker"}) names this rank and step.

    The marker file records that the kill happened, so the restarted worker passes the same step.
    """
    if not fault or fault.get("kill_rank") != rank or fault.get("at_step") != step:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)
