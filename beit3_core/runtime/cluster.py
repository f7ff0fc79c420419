"""The one place Ray is started, with one CPU policy for every command and step.

- `RAY_ADDRESS` (or an explicit address): connect to that cluster.
- Otherwise a local Ray with `BEIT3_RAY_NUM_CPUS` logical CPUs, default the machine's cores + 1, and at least
  what the caller needs (`min_cpus`, e.g. its Train workers + 1). The one CPU beyond the cores keeps Ray's own
  tasks (Ray Data, the progress actor) from starving when the Train workers reserve every core.
  `address="local"` never attaches to a `ray start` cluster found in /tmp/ray by accident.
"""

from __future__ import annotations

import os
import threading

DEFAULT_OBJECT_STORE_BYTES = 1 << 30

_START = threading.Lock()
"""Pipeline steps run in threads: only one of them may start Ray."""


def local_num_cpus(min_cpus: float = 1) -> int:
    configured = os.environ.get("BEIT3_RAY_NUM_CPUS")
    base = int(configured) if configured else (os.cpu_count() or 1) + 1
    return max(base, int(-(-min_cpus // 1)))


def start_ray(address: str | None = None, min_cpus: float = 1, object_store_bytes: int | None = None) -> None:
    """Connect to `address` / `RAY_ADDRESS`, or start the local Ray once per process (reused afterwards)."""
    import ray

    with _START:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local only; a cluster sets `token`
        ray.init(
            address="local",
            num_cpus=local_num_cpus(min_cpus),
            object_store_memory=object_store_bytes or DEFAULT_OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
        )
