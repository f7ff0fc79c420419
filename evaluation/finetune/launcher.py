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
from pathlib import Path
from typing import Any

import torch

from beit3_core.config import get_config
from beit3_core.runtime.checkpoint import MODEL_FILE
from beit3_core.runtime.driver import DriverRun
from beit3_core.runtime.tracking import TrackedRun, param_text
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

    run = DriverRun(f"finetune-{task}", cfg.run, cfg.fingerprint())
    run.ensure_new()
    out_dir = Path(cfg.run.output_dir) if cfg.run.output_dir else run.run_dir / "final"
    params = {"num_train_examples": len(train_set), "backbone": backbone, "head_options": head_options}
    with _open_tracking(run, cfg, "finetune", params) as tracked:
        loop_config = {"config": cfg.to_dict(), "backbone": backbone, "head_options": head_options}
        result = run.fit(train_loop_per_worker, loop_config, f"finetune {task}")
        checkpoint = run.export(result, out_dir)[MODEL_FILE]
        model, _ = load_task_checkpoint(checkpoint)
        metrics, submission = _evaluate(cfg, model, tokenizer, out_dir)
        run.upload(checkpoint, submission)
        _log_results(tracked, cfg, metrics, submission)
    return _result(cfg, metrics, tracked.run_id, run.tracking_uri, checkpoint, submission) | {"run_name": run.name}


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
    run = DriverRun(f"evaluate-{task}", cfg.run, cfg.fingerprint())
    out_dir = Path(cfg.run.output_dir) if cfg.run.output_dir else run.run_dir
    with _open_tracking(run, cfg, "evaluate", params | {"checkpoint": str(checkpoint)}) as tracked:
        metrics, submission = _evaluate(cfg, model, tokenizer, out_dir)
        _log_results(tracked, cfg, metrics, submission)
    return _result(cfg, metrics, tracked.run_id, run.tracking_uri, checkpoint, submission)


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


def _open_tracking(run: DriverRun, cfg: FinetuneConfig, step: str, extra_params: dict) -> TrackedRun:
    tags = {"beit3.step": step, "beit3.task": cfg.task}
    params = cfg.flat() | {"eval_split": cfg.eval_split} | {k: param_text(v) for k, v in extra_params.items()}
    return run.open_tracking(tags, params, {"config": cfg.to_dict()})


def _log_results(tracked: TrackedRun, cfg: FinetuneConfig, metrics: dict, submission: Path) -> None:
    tracked.log_metrics(numeric_metrics(metrics, prefix="eval_"))
    tracked.log_config("finetune_config.yaml", cfg.to_dict())
    tracked.log_text(f"{cfg.task}_{cfg.eval_split}_metrics.json", json.dumps(metrics, indent=2, default=str))
    tracked.log_file(submission, "submission")
