"""Driver side of a training (or evaluation) run: its name and storage, its MLflow run, the Ray Train fit with
live progress, and the final files.

Run names: a new run gets `<kind>-<config hash>-<timestamp>` (or `run.name`), and starting a run whose name
already exists in the storage is an error: Ray Train resumes any run it finds under the same name, so reusing a
name by accident would silently continue an unrelated run. `resume=NAME` continues a run on purpose, after
checking that its config hash matches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from beit3_core.runtime.atomic import copy_atomic
from beit3_core.runtime.checkpoint import MODEL_FILE
from beit3_core.runtime.cluster import start_ray
from beit3_core.runtime.config import RunSettings
from beit3_core.runtime.progress import progress_hooks, run_with_progress
from beit3_core.runtime.storage import RunStorage
from beit3_core.runtime.tracking import TrackedRun, default_tracking_uri

RUN_INFO = "run_info.json"
LOCAL_CACHE = Path("runs/local")
"""Local copies of the final files when the run storage is remote."""


class DriverRun:
    """One run's name, storage, local folder and tracking URI; `open_tracking` opens (or, resuming, reopens) its
    MLflow run; `fit` trains; `export` copies final files out of the last checkpoint; `upload` stores them."""

    def __init__(self, prefix: str, run: RunSettings, config_hash: str, resume: str | None = None):
        self.run, self.config_hash = run, config_hash
        self.storage = RunStorage(run.storage_path)
        self.previous: dict[str, Any] = {}
        if resume:
            self.name = resume
            if not self.storage.exists(resume, RUN_INFO):
                raise FileNotFoundError(f"cannot resume {resume!r}: no {RUN_INFO} under {self.storage.path(resume)}")
            self.previous = json.loads(self.storage.read_text(resume, RUN_INFO))
            if self.previous["config_hash"] != config_hash:
                raise ValueError(
                    f"cannot resume {resume!r}: it was started with another config "
                    f"(hash {self.previous['config_hash']}, now {config_hash})"
                )
        else:
            self.name = run.name or f"{prefix}-{config_hash}-{time.strftime('%Y%m%d-%H%M%S')}"
        root = self.storage.local_root
        self.run_dir = root / self.name if root else LOCAL_CACHE.resolve() / self.name
        self.tracking_uri = default_tracking_uri(run.mlflow_tracking_uri, root or self.run_dir.parent)
        self.tracked: TrackedRun | None = None

    def ensure_new(self) -> None:
        if self.storage.exists(self.name):
            raise FileExistsError(
                f"run {self.name!r} already exists in {self.storage.uri}; resume it explicitly or choose another "
                "run.name"
            )

    def open_tracking(self, tags: dict[str, str], params: dict[str, Any], info: dict | None = None) -> TrackedRun:
        """Open the MLflow run (reopen it when resuming) and write the run info beside the checkpoints."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracked = TrackedRun.open(
            self.tracking_uri,
            self.run.mlflow_experiment,
            self.run_dir.parent,
            self.name,
            tags | {"beit3.config_hash": self.config_hash},
            params,
            existing_run_id=self.previous.get("mlflow_run_id"),
            parent_run_id=self.run.mlflow_parent_run_id,
        )
        record = {"config_hash": self.config_hash, "mlflow_run_id": self.tracked.run_id}
        record |= {"tracking_uri": self.tracking_uri} | (info or {})
        self.storage.write_text(json.dumps(record, indent=2), self.name, RUN_INFO)
        return self.tracked

    def fit(self, loop, loop_config: dict, label: str):
        """Train `loop` on Ray Train with live progress on the driver (steps, failures, restarts); returns the
        Ray Train result, raising the run's error if it failed."""
        start_ray(self.run.ray_address, min_cpus=self.run.num_workers * self.run.cpus_per_worker + 1)
        board, callback = progress_hooks()
        loop_config = loop_config | {
            "mlflow_run_id": self.tracked.run_id,
            "tracking_uri": self.tracking_uri,
            "progress": board,
        }
        trainer = build_torch_trainer(loop, loop_config, self.run, self.name, self.storage, [callback])
        result = run_with_progress(trainer.fit, board, label, self.run.max_failures)
        if result.error is not None:
            raise result.error
        return result

    def export(self, result, out_dir: Path, names: tuple[str, ...] = (MODEL_FILE,)) -> dict[str, Path]:
        """Copy `names` of the final checkpoint into `out_dir`, each atomically (`upload` puts files beside the
        run in its storage)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        out = {}
        with result.checkpoint.as_directory() as folder:
            for name in names:
                copy_atomic(Path(folder) / name, out_dir / name)
                out[name] = out_dir / name
        return out

    def upload(self, *paths: Path) -> None:
        for path in paths:
            self.storage.upload_file(path, self.name, "final", path.name)


def build_torch_trainer(loop, loop_config: dict, run: RunSettings, run_name: str, storage: RunStorage, callbacks=()):
    """A Ray Train `TorchTrainer` for `loop` with the scaling, storage, failure and checkpoint settings of `run`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=run.num_workers, use_gpu=run.use_gpu, resources_per_worker={"CPU": run.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.ray_storage_path(),
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=run.keep_checkpoints),
            callbacks=list(callbacks),
        ),
    )
