"""`beit3 run` as a user runs it: a subprocess in local mode (ephemeral Prefect server with its state in the run
directory), on a config whose source path is missing, so the ingest step fails, is retried and is reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.raw_data import build_raw_dataset, tiny_preprocess_config

pytestmark = pytest.mark.slow


def test_a_failing_step_is_retried_and_reported_with_its_name_and_log(tmp_path, pipeline_config_writer):
    raw = build_raw_dataset(tmp_path / "raw")
    sources = raw["sources"] + [{"name": "lost", "format": "image_folder", "path": str(tmp_path / "nowhere")}]
    preprocess = tiny_preprocess_config(tmp_path, tmp_path / "unused", sources)
    config = pipeline_config_writer(tmp_path, preprocess, ["vqav2"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "RAY_ADDRESS"))}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(config)], capture_output=True, text=True, env=env, timeout=240
    )
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-4000:]
    stderr = out.stderr
    assert "step ingest[lost] failed" in stderr
    assert f"source 'lost': {tmp_path / 'nowhere'} does not exist" in stderr
    assert "Retry 1/1 will start immediately" in stderr and "Retries are exhausted" in stderr  # the step's log
    run_dir = tmp_path / "run"
    assert (run_dir / ".state" / "prefect" / "prefect.db").is_file()  # PREFECT_HOME=<run_dir>/.state/prefect
    # The sources that were found are cached in the run directory's result storage, not in PREFECT_HOME/storage
    # (the failed step has no cache key; Prefect keeps its exception there under a random name).
    records = [p.name.rsplit("-", 1)[0] for p in (run_dir / ".state" / "prefect" / "results").glob("ingest-*")]
    assert sorted(records) == sorted(f"ingest-{source['name']}" for source in raw["sources"])
    assert not list((run_dir / ".state" / "prefect" / "storage").glob("ingest-*"))
    ledger = json.loads((run_dir / ".state" / "steps.json").read_text())["steps"]
    assert ledger["ingest[lost]"]["state"] == "Failed"
    assert "preprocess" not in ledger
    log_file = Path(stderr.rsplit("full log: ", 1)[1].split()[0])
    assert "ingest[lost]" in log_file.read_text()
