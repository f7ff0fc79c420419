"""Driver side of fine-tuning: resolve the config, open the MLflow run, train on Ray Train, evaluate, export.

One MLflow run per call: params (the resolved config, backbone shape, head options), the per-step training
metrics written by rank 0, the official metrics of the evaluation split as `eval_<name>`, and the artifacts
(the config as YAML, the metrics JSON, the submission file). Run names are `finetune-<task>-<config
hash>-<timestamp>` (or `run.name`); a name that already exists in the storage is an error, because Ray Train
would silently continue the run it finds there. Within a run, Ray restarts failed workers from the last
epoch checkpoint (`run.max_failures`).

Evaluation runs in the driver after training: the final checkpoint is reloaded and the whole split is
predicted unpadded, in one process (on the GPU when `run.use_gpu` and one is visible).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from beit3_core.config import get_config
from beit3_core.train.experiments import experiment_id, log_params
from beit3_core.train.launcher import default_tracking_uri as tracking_uri_for
from beit3_core.train.launcher import fit_trainer, start_ray
from beit3_core.train.storage import RunStorage
from evaluation.finetune.config import FinetuneConfig, resolve_paths, to_finetune_config
from evaluation.finetune.loop import load_tokenizer, train_dataset
from evaluation.finetune.predict import evaluate_split, numeric_metrics
from evaluation.finetune.weights import (
    build_task_model,
    head_options_of,
    initialise,
    is_task_checkpoint,
    load_task_checkpoint,
    resolve_backbone,
)
from evaluation.tasks import get_task

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
LOCAL_CACHE = "runs/finetune-local"
"""Local copies of the final files when the run storage is remote."""
CHECKPOINT_NAME = "model.safetensors"


def run_finetune(task: str, config: FinetuneConfig | dict, init_checkpoint: str | None = None) -> dict[str, Any]:
    """Fine-tune `task` on Ray Train, then evaluate it on its evaluation split.

    Args:
        task: An `evaluation.tasks` name.
        config: A `FinetuneConfig`, or a dict of overrides of the task recipe (nested sections or flat keys,
            optionally `config: file.yaml`).
        init_checkpoint: Initial weights; overrides `model.init_checkpoint` (None keeps the config's).

    Returns:
        `metrics` (official metrics of the evaluation split), `mlflow_run_id`, `checkpoint` (the fine-tuned
        model, safetensors), `submission` (the official-format prediction file), `run_name`, `tracking_uri`,
        `eval_split`.
    """

    from evaluation.finetune.loop import train_loop_per_worker

    cfg = to_finetune_config(task, config)
    if init_checkpoint is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_checkpoint=str(init_checkpoint)))
    cfg = resolve_paths(cfg)
    task_obj = get_task(task)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train_set = train_dataset(cfg, task_obj, tokenizer)  # built here too, so bad options fail before Ray starts
    head_options = head_options_of(train_set) | cfg.model.head_options
    backbone = _backbone(cfg, cfg.model.init_checkpoint, tokenizer)

    storage = RunStorage(cfg.run.storage_path)
    run_name = cfg.run.name or f"finetune-{task}-{cfg.fingerprint()}-{time.strftime('%Y%m%d-%H%M%S')}"
    if storage.exists(run_name):
        raise FileExistsError(f"run {run_name!r} already exists in {storage.uri}; choose another run.name")
    run_dir = storage.local_root / run_name if storage.local_root else Path(LOCAL_CACHE).resolve() / run_name
    out_dir = Path(cfg.run.output_dir) if cfg.run.output_dir else run_dir / "final"
    tracking_uri = tracking_uri_for(cfg, storage, run_dir)
    params = {"num_train_examples": len(train_set), "backbone": backbone, "head_options": head_options}
    client, run_id = _open_mlflow_run(cfg, tracking_uri, run_dir.parent, run_name, "finetune", params)
    info = {"config_hash": cfg.fingerprint(), "config": cfg.to_dict(), "mlflow_run_id": run_id}
    storage.write_text(json.dumps(info | {"tracking_uri": tracking_uri}, indent=2), run_name, RUN_INFO)

    start_ray(cfg)
    loop_config = {
        "config": cfg.to_dict(),
        "backbone": backbone,
        "head_options": head_options,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
    }
    try:
        result = fit_trainer(train_loop_per_worker, loop_config, cfg.run, run_name, storage, f"finetune {task}")
        checkpoint = out_dir / CHECKPOINT_NAME
        out_dir.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as folder:
            tmp = checkpoint.with_name(f".{CHECKPOINT_NAME}.tmp")
            shutil.copy2(Path(folder) / CHECKPOINT_NAME, tmp)
            tmp.replace(checkpoint)
        model, _ = load_task_checkpoint(checkpoint)
        metrics, submission = _evaluate(cfg, model, tokenizer, out_dir)
        for path in (checkpoint, submission):
            storage.upload_file(path, run_name, "final", path.name)
        _log_results(client, run_id, cfg, metrics, submission)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return _result(cfg, metrics, run_id, tracking_uri, checkpoint, submission) | {"run_name": run_name}


def evaluate_checkpoint(
    task: str, checkpoint: str | Path, config: FinetuneConfig | dict | str | Path
) -> dict[str, Any]:
    """Evaluate a checkpoint on the task's evaluation split, logged as an MLflow run of its own.

    Args:
        task: An `evaluation.tasks` name.
        checkpoint: A fine-tuned model from `run_finetune` (loaded strictly), or a backbone / MDM / released
            checkpoint (e.g. an ITC model for zero-shot retrieval): its backbone and the heads it shares with the
            task model are loaded, the other heads stay at init.
        config: The task config (a `FinetuneConfig`, a dict, or a YAML path): data, tokenizer, image size.

    Returns:
        `metrics`, `mlflow_run_id`, `checkpoint`, `submission`, `tracking_uri`, `eval_split`.
    """
    cfg = resolve_paths(to_finetune_config(task, config))
    checkpoint = Path(checkpoint).resolve()
    task_obj = get_task(task)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if is_task_checkpoint(checkpoint):
        model, header = load_task_checkpoint(checkpoint, task)
        params = {"backbone": header["config"], "head_options": header["head_options"]}
    else:
        eval_set = task_obj.dataset(cfg.eval_split, cfg.data.root, tokenizer, cfg.model.img_size, **cfg.data.options)
        head_options = head_options_of(eval_set) | cfg.model.head_options
        backbone = _backbone(cfg, str(checkpoint), tokenizer)
        model = build_task_model(task_obj, cfg.model.name, backbone, head_options)
        initialise(model, checkpoint, copy_heads=None)
        params = {"backbone": backbone, "head_options": head_options}
    storage = RunStorage(cfg.run.storage_path)
    run_name = cfg.run.name or f"evaluate-{task}-{cfg.fingerprint()}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage.local_root / run_name if storage.local_root else Path(LOCAL_CACHE).resolve() / run_name
    out_dir = Path(cfg.run.output_dir) if cfg.run.output_dir else run_dir
    tracking_uri = tracking_uri_for(cfg, storage, run_dir)
    client, run_id = _open_mlflow_run(
        cfg, tracking_uri, run_dir.parent, run_name, "evaluate", params | {"checkpoint": str(checkpoint)}
    )
    try:
        metrics, submission = _evaluate(cfg, model, tokenizer, out_dir)
        _log_results(client, run_id, cfg, metrics, submission)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return _result(cfg, metrics, run_id, tracking_uri, checkpoint, submission)


def _backbone(cfg: FinetuneConfig, init_checkpoint: str | None, tokenizer) -> dict[str, Any]:
    """BEiT3Config overrides of the run; the tokenizer's ids must fit the text embedding."""
    vocab_size = tokenizer.vocab_size if tokenizer is not None else None
    backbone = resolve_backbone(
        cfg.model.name, cfg.model.overrides, init_checkpoint, vocab_size, cfg.model.img_size, cfg.model.drop_path_rate
    )
    model_vocab = get_config(cfg.model.name, **backbone).vocab_size
    if vocab_size is not None and vocab_size > model_vocab:
        raise ValueError(
            f"tokenizer {cfg.data.tokenizer} has {vocab_size} ids but the model's text embedding only "
            f"{model_vocab} rows (from {init_checkpoint or cfg.model.name}): pretraining used another tokenizer"
        )
    return backbone


def _evaluate(cfg: FinetuneConfig, model: torch.nn.Module, tokenizer, out_dir: Path) -> tuple[dict, Path]:
    task = get_task(cfg.task)
    dataset = task.dataset(cfg.eval_split, cfg.data.root, tokenizer, cfg.model.img_size, **cfg.data.options)
    device = "cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu"
    metrics, submission = evaluate_split(
        task, model, dataset, out_dir, cfg.eval_batch_size, tokenizer, device, cfg.data.loader_workers
    )
    (out_dir / f"{cfg.task}_{cfg.eval_split}_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    logger.info("%s on %s: %s", cfg.task, cfg.eval_split, json.dumps(numeric_metrics(metrics)))
    return metrics, submission


def _result(cfg, metrics: dict, run_id: str, tracking_uri: str, checkpoint: Path, submission: Path) -> dict[str, Any]:
    return {
        "metrics": metrics,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "checkpoint": str(checkpoint),
        "submission": str(submission),
        "eval_split": cfg.eval_split,
    }


def _open_mlflow_run(
    cfg: FinetuneConfig, tracking_uri: str, storage: Path, run_name: str, step: str, extra_params: dict
) -> tuple[Any, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = experiment_id(client, cfg.run.mlflow_experiment, tracking_uri, storage)
    tags = {"beit3.step": step, "beit3.task": cfg.task, "beit3.config_hash": cfg.fingerprint()}
    run = client.create_run(experiment, run_name=run_name, tags=tags)
    params = cfg.flat() | {"eval_split": cfg.eval_split} | {k: _param(v) for k, v in extra_params.items()}
    log_params(client, run.info.run_id, params)
    return client, run.info.run_id


def _param(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def _log_results(client, run_id: str, cfg: FinetuneConfig, metrics: dict, submission: Path) -> None:
    import yaml
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    numbers = numeric_metrics(metrics, prefix="eval_")
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in numbers.items()])
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "finetune_config.yaml"
        config_path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        client.log_artifact(run_id, str(config_path))
        metrics_path = Path(tmp) / f"{cfg.task}_{cfg.eval_split}_metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
        client.log_artifact(run_id, str(metrics_path))
    client.log_artifact(run_id, str(submission), artifact_path="submission")
