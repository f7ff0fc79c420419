"""Pretrain step: MDM pretraining of the configured recipe on the step's shards, with Ray Train.

The Ray run name is the cache key (`pretrain-<hash>`), so the run directory is deterministic: a finished run is
reused even when Prefect's cache record is gone, an interrupted one is resumed from its last checkpoint, and
`--force pretrain` replaces it. The library opens its own MLflow run; it is nested under the pipeline's run.
"""

import copy
import json
import shutil
from pathlib import Path

from prefect import task

from beit3_core.train.config import PretrainConfig
from beit3_core.train.launcher import RUN_INFO, run_pretraining
from flows.settings import Settings, ensure_ray
from flows.steps.keys import code_hash, file_sha256, step_key
from flows.steps.tracking import Tracking


def pretrain_key_of(cfg: PretrainConfig, dataset: dict) -> str:
    code = code_hash("beit3_core", "flows/steps/pretrain.py")
    return step_key("pretrain", dataset["dataset_version"], cfg.fingerprint(), cfg.run.storage_path, code)


def pretrain_key(_ctx, params: dict) -> str:
    return pretrain_key_of(params["cfg"], params["dataset"])


@task(cache_key_fn=pretrain_key)
def pretrain(cfg: PretrainConfig, dataset: dict, settings: Settings, tracking: Tracking, force: bool = False) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.run.name = pretrain_key_of(cfg, dataset)
    return run_training(cfg, "pretrain", dataset, settings, tracking, force, {})


def run_training(
    cfg: PretrainConfig, step: str, dataset: dict, settings: Settings, tracking: Tracking, force: bool, tags: dict
) -> dict:
    """Run (or reuse, or resume) the Ray Train run named `cfg.run.name` and describe its final checkpoint; shared by
    the pretrain and ITC steps, which differ in config and cache key only."""
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    final = run_dir / "final" / "model.safetensors"
    if force or not final.is_file():
        if force or not (run_dir / RUN_INFO).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start needs a name no run uses yet
        resume = cfg.run.name if (run_dir / RUN_INFO).is_file() else None
        ensure_ray(settings, min_cpus=int(cfg.run.num_workers * cfg.run.cpus_per_worker) + 1)
        run_pretraining(cfg, resume=resume)
    info = json.loads((run_dir / RUN_INFO).read_text())
    tracking.adopt(info["mlflow_run_id"], step, {"beit3.dataset_version": dataset["dataset_version"]} | tags)
    metrics = tracking.client().get_run(info["mlflow_run_id"]).data.metrics
    return {
        "run_name": cfg.run.name,
        "mlflow_run_id": info["mlflow_run_id"],
        "checkpoint": str(final),
        "checkpoint_sha256": file_sha256(final),
        "released_checkpoint": str(run_dir / "final" / "model_released_layout.pth"),
        "metrics": metrics,
        "dataset_version": dataset["dataset_version"],
        "files": [str(final)],
        "key": cfg.run.name,
    }
