"""Fixtures of the integration tests: `ray_local`, one local Ray per test module (fine-tuning runs reuse it)."""

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The Train controller polls its workers every 2 s by default: most of a micro run's wall time here.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, object_store_memory=300 << 20)
    yield
    ray.shutdown()
