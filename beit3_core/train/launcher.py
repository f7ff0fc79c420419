"""Driver side of pretraining: resolve the model config, open the MLflow run, run Ray Train, export the result.

The same driver runs both objectives of `model.objective`: MDM pretraining and ITC tuning (the dual encoder on
the shards' image-text pairs, `beit3_core.itc`); they differ in the model, the metrics and the final report.

Run names: a new run gets `pretrain-<config hash>-<timestamp>` (`itc-...` for ITC, or `run.name`), and
starting a run whose name already exists in the storage path is an error: Ray Train resumes any run it finds
under the same name, so reusing a name by accident would silently continue an unrelated run. `resume=NAME`
continues a run on purpose, after checking that its config hash matches.
"""

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from beit3_core.checkpoint import export_released_checkpoint, load_checkpoint
from beit3_core.config import get_config
from beit3_core.train.config import PretrainConfig
from beit3_core.train.experiments import experiment_id, log_params
from beit3_core.train.progress import progress_hooks, run_with_progress
from beit3_core.train.storage import RunStorage
from beit3_core.train.streams import SYNTHETIC, read_shard_refs

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
LOCAL_CACHE = "runs/pretrain-local"
"""Local copies of the final exports when the run storage is remote."""
EVAL_BATCHES = 12


@dataclass
class PretrainResult:
    run_name: str
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    final_checkpoint: Path
    released_checkpoint: Path
    metrics: dict
    masked_token_accuracy: dict
    """MDM: {kind: {accuracy, baseline, num_masked}} of the final model on fresh batches; empty for ITC."""
    retrieval_accuracy: dict = field(default_factory=dict)
    """ITC: {"i2t" | "t2i": {accuracy, chance, num_pairs}} in-batch retrieval on fresh batches; empty for MDM."""


def step_name(cfg: PretrainConfig) -> str:
    """The run's step in names and MLflow tags: "pretrain" (MDM) or "itc"."""
    return "itc" if cfg.model.objective == "itc" else "pretrain"


def resolve_model_config(cfg: PretrainConfig) -> tuple[dict, dict]:
    """(BEiT3Config dict, data info) for the run: vocabulary sizes and the mask id come from the shards."""
    overrides = dict(cfg.model.overrides)
    overrides |= {"drop_path_rate": cfg.model.drop_path_rate, "grad_checkpointing": cfg.model.grad_checkpointing}
    if cfg.data.shards == SYNTHETIC:
        overrides = {"vocab_size": 1024, "visual_vocab_size": 64} | overrides
        config = get_config(cfg.model.name, **overrides)
        return config.to_dict(), {"mask_id": config.vocab_size - 1}
    refs, manifest = read_shard_refs(cfg.data.shards)
    if cfg.model.objective == "itc" and not any(r.counts.get("pair", 0) for r in refs):
        raise ValueError(
            f"ITC tuning needs image-text pairs, but none of the {len(refs)} shards in {cfg.data.shards} holds one"
            " (add a pair source to the preprocessing config)"
        )
    text, visual = manifest["text_tokenizer"], manifest["visual_tokenizer"]
    overrides = {"vocab_size": text["vocab_size"], "visual_vocab_size": visual["num_codes"]} | overrides
    config = get_config(cfg.model.name, **overrides)
    if visual["grid_size"] != config.grid_size:
        raise ValueError(
            f"shards hold a {visual['grid_size']}^2 token grid, {cfg.model.name} has a {config.grid_size}^2 patch grid"
        )
    if text["mask_id"] >= config.vocab_size:
        raise ValueError(f"text <mask> id {text['mask_id']} outside the model vocabulary of {config.vocab_size}")
    return config.to_dict(), {"mask_id": text["mask_id"]}


def default_tracking_uri(cfg: PretrainConfig, storage: RunStorage, run_dir: Path) -> str:
    # Default: a SQLite store beside the runs (on local disk also when the storage is remote).
    local = storage.local_root or run_dir.parent
    return cfg.run.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local}/mlflow.db"


def start_ray(cfg: PretrainConfig) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # One logical CPU beyond the workers, so Ray's own tasks never starve the training actors.
    num_cpus = int(cfg.run.num_workers * cfg.run.cpus_per_worker) + 1
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30
    )


def _open_mlflow_run(
    cfg: PretrainConfig,
    tracking_uri: str,
    storage: Path,
    run_name: str,
    model_config: dict,
    existing_run_id: str | None,
) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = experiment_id(client, cfg.run.mlflow_experiment, tracking_uri, storage)
    if existing_run_id:
        client.update_run(existing_run_id, status="RUNNING")
        return existing_run_id
    run = client.create_run(
        experiment, run_name=run_name, tags={"beit3.step": step_name(cfg), "beit3.config_hash": cfg.fingerprint()}
    )
    params = cfg.flat() | {f"model_config.{k}": str(v) for k, v in model_config.items()}
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def build_torch_trainer(loop, loop_config: dict, run, run_name: str, storage: RunStorage, callbacks=()):
    """A Ray Train `TorchTrainer` for `loop` with the scaling, storage, failure and checkpoint settings of `run`
    (any run section with num_workers, use_gpu, cpus_per_worker, max_failures, keep_checkpoints)."""
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


def fit_trainer(loop, loop_config: dict, run, run_name: str, storage: RunStorage, label: str):
    """Build the `TorchTrainer`, fit it with live progress on the driver (steps, failures, restarts) and return
    the Ray Train result; a failed run raises its error. Ray must be started (`start_ray`)."""
    board, callback = progress_hooks()
    trainer = build_torch_trainer(loop, loop_config | {"progress": board}, run, run_name, storage, [callback])
    result = run_with_progress(trainer.fit, board, label, run.max_failures)
    if result.error is not None:
        raise result.error
    return result


def run_pretraining(cfg: PretrainConfig, resume: str | None = None) -> PretrainResult:
    """Pretrain (or ITC-tune) with Ray Train as configured; `resume` names an earlier run in the same storage."""
    import mlflow

    from beit3_core.train.loop import train_loop_per_worker

    storage = RunStorage(cfg.run.storage_path)
    model_config, data_info = resolve_model_config(cfg)
    if resume:
        run_name = resume
        if not storage.exists(run_name, RUN_INFO):
            raise FileNotFoundError(f"cannot resume {run_name!r}: no {RUN_INFO} under {storage.path(run_name)}")
        info = json.loads(storage.read_text(run_name, RUN_INFO))
        if info["config_hash"] != cfg.fingerprint():
            raise ValueError(
                f"cannot resume {run_name!r}: it was started with another config "
                f"(hash {info['config_hash']}, now {cfg.fingerprint()})"
            )
    else:
        run_name = cfg.run.name or f"{step_name(cfg)}-{cfg.fingerprint()}-{time.strftime('%Y%m%d-%H%M%S')}"
        if storage.exists(run_name):
            raise FileExistsError(f"run {run_name!r} already exists in {storage.uri}; resume it explicitly or rename")
        info = {}
    # Final exports are also kept on local disk (the run folder itself when storage is local).
    run_dir = storage.local_root / run_name if storage.local_root else Path(LOCAL_CACHE).resolve() / run_name
    tracking_uri = default_tracking_uri(cfg, storage, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mlflow_run_id = _open_mlflow_run(
        cfg, tracking_uri, run_dir.parent, run_name, model_config, info.get("mlflow_run_id")
    )
    info = {
        "config_hash": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "model_config": model_config,
    }
    storage.write_text(json.dumps(info, indent=2), run_name, RUN_INFO)

    start_ray(cfg)
    loop_config = {
        "config": cfg.to_dict(),
        "model_config": model_config,
        "data_info": data_info,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
    }
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        result = fit_trainer(train_loop_per_worker, loop_config, cfg.run, run_name, storage, f"pretrain {run_name}")
        final_dir = run_dir / "final"
        with result.checkpoint.as_directory() as folder:
            final_dir.mkdir(exist_ok=True)
            shutil.copy2(Path(folder) / "model.safetensors", final_dir / "model.safetensors")
            shutil.copy2(Path(folder) / "train_state.json", final_dir / "train_state.json")
        model = load_checkpoint(final_dir / "model.safetensors")
        released = export_released_checkpoint(model, final_dir / "model_released_layout.pth")
        for name in ("model.safetensors", "model_released_layout.pth", "train_state.json"):
            storage.upload_file(final_dir / name, run_name, "final", name)
        report = _log_artifacts(client, mlflow_run_id, cfg, model, data_info, final_dir)
        client.set_terminated(mlflow_run_id, "FINISHED")
    except BaseException:
        client.set_terminated(mlflow_run_id, "FAILED")
        raise
    return PretrainResult(
        run_name,
        run_dir,
        mlflow_run_id,
        tracking_uri,
        final_dir / "model.safetensors",
        released,
        dict(result.metrics or {}),
        {} if cfg.model.objective == "itc" else report,
        report if cfg.model.objective == "itc" else {},
    )


def _log_artifacts(client, run_id: str, cfg: PretrainConfig, model, data_info: dict, final_dir: Path) -> dict:
    import yaml

    from beit3_core.train.evaluate_itc import in_batch_retrieval_report
    from beit3_core.train.evaluate_mdm import masked_token_report
    from beit3_core.train.streams import StepBatches
    from beit3_core.train.visualize import masked_prediction_grid

    # Batches past the end of training (fresh masks for MDM); the baselines are the most frequent target token
    # (MDM) and chance (ITC).
    stream_of_batches = iter(
        StepBatches(cfg, model.config.to_dict(), data_info, rank=0, world_size=1, start_step=cfg.run.steps)
    )
    batches = [next(stream_of_batches) for _ in range(EVAL_BATCHES)]
    if cfg.model.objective == "itc":
        report = in_batch_retrieval_report(model, batches)
        (final_dir / "retrieval_accuracy.json").write_text(json.dumps(report, indent=2))
        for direction, values in report.items():
            client.log_metric(run_id, f"final_accuracy_{direction}", values["accuracy"])
            client.log_metric(run_id, f"final_chance_{direction}", values["chance"])
    else:
        report = masked_token_report(model, batches)
        (final_dir / "masked_token_accuracy.json").write_text(json.dumps(report, indent=2))
        for kind, values in report.items():
            client.log_metric(run_id, f"final_accuracy_{kind}", values["accuracy"])
            client.log_metric(run_id, f"final_baseline_{kind}", values["baseline"])
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / f"{step_name(cfg)}_config.yaml"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        client.log_artifact(run_id, str(config_path))
        batch = batches[0]
        stream = batch.image or batch.pair
        if stream is not None and cfg.model.objective != "itc":
            png = masked_prediction_grid(model, stream, Path(tmp) / "masked_predictions.png")
            client.log_artifact(run_id, str(png))
    client.log_artifact(run_id, str(final_dir / "model.safetensors"), artifact_path="checkpoint")
    return report
