"""The preprocessing pipeline on a two-node Ray cluster made on one machine yields the one-node records."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.raw_data import build_raw_dataset, tiny_preprocess_config
from support.ray_cluster import TwoNodeRay

pytestmark = pytest.mark.slow

ENV = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def two_node_cluster(tmp_path):
    cluster = TwoNodeRay(tmp_path / "stack")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _preprocess(config: Path, *extra: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "preprocess", str(config), "--no-progress", *extra],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def _shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def test_two_node_run_matches_one_node_run(two_node_cluster, tmp_path):
    import ray

    raw = build_raw_dataset(tmp_path / "raw")
    two = tiny_preprocess_config(tmp_path / "raw", tmp_path / "two", raw["sources"])
    _preprocess(two, "--ray-address", two_node_cluster.address)
    ray.init(address=two_node_cluster.address, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()

    # The one-node reference starts its own local Ray after the cluster is gone.
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    one = tiny_preprocess_config(one_dir, tmp_path / "one" / "out", raw["sources"])
    two_node_cluster.stop()
    _preprocess(one)
    assert _shard_hashes(tmp_path / "two") == _shard_hashes(tmp_path / "one" / "out")
    assert len(_shard_hashes(tmp_path / "two")) == 14
