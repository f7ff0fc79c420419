"""The preprocessing pipeline on a two-node Ray cluster made on one machine yields the one-node records."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.raw_data import build_raw_dataset, tiny_preprocess_config

pytestmark = pytest.mark.slow

PORT = 6391
ENV = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray(*args: str) -> None:
    ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, *args], env=ENV, check=True, capture_output=True, timeout=120)


@pytest.fixture
def two_node_cluster():
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    _ray(
        "start",
        "--head",
        f"--port={PORT}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        *common,
    )
    try:
        _ray("start", f"--address=127.0.0.1:{PORT}", *common)
        yield f"127.0.0.1:{PORT}"
    finally:
        _ray("stop", "--force")


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
    _preprocess(two, "--ray-address", two_node_cluster)
    ray.init(address=two_node_cluster, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()

    # The one-node reference starts its own local Ray after the cluster is gone.
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    one = tiny_preprocess_config(one_dir, tmp_path / "one" / "out", raw["sources"])
    _ray("stop", "--force")
    _preprocess(one)
    assert _shard_hashes(tmp_path / "two") == _shard_hashes(tmp_path / "one" / "out")
    assert len(_shard_hashes(tmp_path / "two")) == 14
