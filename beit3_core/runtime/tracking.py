"""The MLflow run lifecycle of a training or evaluation run: the driver opens the run and closes it, rank 0 logs
the step metrics into it, and the driver adds the final metrics and artifacts.

Runs are handled through `MlflowClient` and explicit run ids (never the fluent `mlflow.start_run` stack, which
is per thread). A run opened with a parent run id is nested under it (`mlflow.parentRunId`), which is how the
pipeline's parent run holds one child per step.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(configured: str | None, local_root: Path) -> str:
    """`configured`, else `MLFLOW_TRACKING_URI`, else a SQLite store in `local_root` (local disk also when the run
    storage is remote)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local_root}/mlflow.db"


def experiment_id(client, name: str, tracking_uri: str, storage: Path) -> str:
    """Id of experiment `name`; a new one keeps its artifacts in `<storage>/mlartifacts` on a SQLite store.

    MLflow's default artifact root for a SQLite store is `./mlruns` of the current directory, which would scatter
    artifacts wherever a command happens to be started.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (storage / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite") else None
    return client.create_experiment(name, artifact_location=location)


def param_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list | tuple) else str(value)


def log_params(client, run_id: str, params: dict) -> None:
    """All `params` in batches of 100 (MLflow's limit per call), each value cut to MLflow's 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, param_text(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Numeric `metrics` in one batch; `/` in names becomes `_` (MLflow keys stay flat)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k.replace("/", "_"), float(v), now, step) for k, v in metrics.items() if k != "step"]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


class TrackedRun:
    """A run the driver opened (or reopened to resume); close it with `finish` or use it as a context manager,
    which marks it FAILED when the body raises."""

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment: str,
        storage: Path,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        existing_run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        if existing_run_id:
            client.update_run(existing_run_id, status="RUNNING")
            return cls(tracking_uri, existing_run_id)
        if parent_run_id:
            tags = tags | {PARENT_TAG: parent_run_id}
        run = client.create_run(experiment_id(client, experiment, tracking_uri, storage), run_name=run_name, tags=tags)
        log_params(client, run.info.run_id, params)
        return cls(tracking_uri, run.info.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_text(self, name: str, text: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_file(path, folder)

    def log_config(self, name: str, config: dict) -> None:
        import yaml

        self.log_text(name, yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))

    def finish(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc_type is None)


class RankZeroLogger:
    """Worker side: rank 0 logs into the run the driver opened (one writer; survives worker restarts)."""

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, self.run_id, metrics, step)
