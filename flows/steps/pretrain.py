"""Pretrain step: MDM pretraining of the configured recipe on the step's shards, with Ray Train.

The Ray run name is the cache key (`pretrain-<hash>`), so the run's folder in the configured storage (a local
or shared path, or a pyarrow filesystem URI; see `flows.steps.config`) is deterministic: a finished run is
reused even when Prefect's cache record is gone, an interrupted one is resumed from its last checkpoint, and
`--force pretrain` replaces it. The library opens its own MLflow run; it is nested under the pipeline's run.
When the storage is remote, the final checkpoint is also kept under `<run_dir>/.state/pretrain/<run name>` for
the fine-tuning steps.
"""

import copy
import json
from pathlib import Path

from prefect import task

from beit3_core.runtime.driver import RUN_INFO
from beit3_core.runtime.storage import RunStorage
from beit3_core.train.config import PretrainConfig
from beit3_core.train.launcher import run_pretraining
from flows.settings import Settings, ensure_ray, state_dir
from flows.steps.keys import code_hash, file_sha256, step_key
from flows.steps.tracking import Tracking

FINAL = ("final", "model.safetensors")
RELEASED = ("final", "model_released_layout.pth")


def pretrain_key_of(cfg: PretrainConfig, dataset: dict) -> str:
    code = code_hash("beit3_core", "flows/steps/pretrain.py")
    return step_key("pretrain", dataset["dataset_version"], cfg.fingerprint(), cfg.run.storage_path, code)


def pretrain_key(_ctx, params: dict) -> str:
    return pretrain_key_of(params["cfg"], params["dataset"])


@task(cache_key_fn=pretrain_key)
def pretrain(
    cfg: PretrainConfig,
    dataset: dict,
    settings: Settings,
    tracking: Tracking,
    force: bool = False,
    run_dir: str | None = None,
) -> dict:
    """`run_dir`: the pipeline's run directory, where a remote run's final checkpoint is kept locally."""
    cfg = copy.deepcopy(cfg)
    cfg.run.name = pretrain_key_of(cfg, dataset)
    return run_training(cfg, "pretrain", dataset, settings, tracking, force, {}, run_dir)


def run_training(
    cfg: PretrainConfig,
    step: str,
    dataset: dict,
    settings: Settings,
    tracking: Tracking,
    force: bool,
    tags: dict,
    run_dir: str | None = None,
) -> dict:
    """Run (or reuse, or resume) the Ray Train run named `cfg.run.name` in the configured storage and describe
    its final checkpoint; shared by the pretrain and ITC steps, which differ in config and cache key only."""
    name = cfg.run.name
    storage = RunStorage(cfg.run.storage_path)
    if force or not storage.exists(name, *FINAL):
        if force or not storage.exists(name, RUN_INFO):
            storage.remove(name)  # a fresh start needs a name no run uses yet
        resume = name if storage.exists(name, RUN_INFO) else None
        ensure_ray(settings, min_cpus=int(cfg.run.num_workers * cfg.run.cpus_per_worker) + 1)
        cfg.run.mlflow_parent_run_id = tracking.parent_run_id  # created nested; not part of the fingerprint
        run_pretraining(cfg, resume=resume)
    info = json.loads(storage.read_text(name, RUN_INFO))
    local = state_dir(Path(run_dir or ".")) / step / name
    final = storage.local_copy(local / FINAL[-1], name, *FINAL)
    released = storage.local_copy(local / RELEASED[-1], name, *RELEASED)
    tracking.adopt(info["mlflow_run_id"], step, {"beit3.dataset_version": dataset["dataset_version"]} | tags)
    metrics = tracking.client().get_run(info["mlflow_run_id"]).data.metrics
    return {
        "run_name": name,
        "mlflow_run_id": info["mlflow_run_id"],
        "checkpoint": str(final),
        "checkpoint_sha256": file_sha256(final),
        "released_checkpoint": str(released),
        "storage": storage.uri,
        "metrics": metrics,
        "dataset_version": dataset["dataset_version"],
        "files": [str(final)],
        "key": name,
    }
