"""Shared set-up of the flow tests: a real Prefect test server, a real local Ray, a stand-in fine-tuning module.

The environment is set at import time, before any test module imports prefect (which reads it then).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from support.model_inputs import micro_pretrain_overrides

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL", "BEIT3_RESULT_STORAGE"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the flow runs of a test module (the flow reuses an initialised Ray); shut down after the
    module so that the other test folders start their own."""
    import ray

    ray.init(address="local", num_cpus=3, object_store_memory=400 << 20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fake_finetune():
    """A fast stand-in for `evaluation.finetune` that records its calls, so the DAG tests can count reruns per
    benchmark; real fine-tuning on Ray Train is covered by tests/integration/test_finetune_ray.py."""
    # The fine-tuning config parser stays importable under the stand-in (the step reads the unit's data section).
    importlib.import_module("evaluation.finetune.config")
    spec = importlib.util.spec_from_file_location("evaluation.finetune", Path(__file__).with_name("fake_finetune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = sys.modules.get("evaluation.finetune")
    sys.modules["evaluation.finetune"] = module
    yield module
    if real is None:
        sys.modules.pop("evaluation.finetune", None)
    else:
        sys.modules["evaluation.finetune"] = real


PRETRAIN_OVERRIDES = micro_pretrain_overrides(loader_workers=0, warmup_steps=2) | {
    # The micro model of tests/integration/test_pretrain_ray.py, 4 steps on one Ray Train worker.
    "run": {"steps": 4, "checkpoint_every": 4, "log_every": 2, "num_workers": 1, "max_failures": 0},
}


def write_pipeline_config(
    folder: Path,
    preprocess: Path,
    benchmarks: list,
    name: str = "pipeline.yaml",
    storage: str | None = None,
    extra: dict | None = None,
) -> Path:
    """A pipeline YAML over a tiny preprocessing config; no I/O retry delay so failures report at once."""
    import yaml

    config = {
        "run_dir": str(folder / "run"),
        "preprocess": str(preprocess),
        "pretrain": {"recipe": "tiny_cpu", "overrides": PRETRAIN_OVERRIDES},
        "benchmarks": benchmarks,
        "execution": {"io_retries": 1, "retry_delay_seconds": [0]},
    }
    if storage:
        config["storage"] = storage
    config |= extra or {}
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def pipeline_config_writer():
    return write_pipeline_config


def task_run_states(flow_run_id: str, wait_s: float = 30) -> dict[str, str]:
    """Task run name -> final state name, as the Prefect server recorded them. Task run states reach the server as
    events, recorded a moment after the flow returns (longer on a busy machine), so wait for every one to be final."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(run.state and run.state.is_final() for run in runs) or time.monotonic() > deadline:
                return {run.name: run.state.name if run.state else "-" for run in runs}
            time.sleep(0.5)


@pytest.fixture(scope="session")
def prefect_states():
    return task_run_states
