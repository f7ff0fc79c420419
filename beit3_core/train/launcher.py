"""Driver side of pretraining: resolve the model config, run the training runtime, export the result.

The same driver runs both objectives of `model.objective`: MDM pretraining and ITC tuning (the dual encoder on
the shards' image-text pairs, `beit3_core.itc`); they differ in the model, the metrics and the final report.
Naming, resume checks, the MLflow run and the Ray Train fit are the runtime's (`beit3_core.runtime.driver`):
a new run is `pretrain-<config hash>-<timestamp>` (`itc-...` for ITC, or `run.name`); `resume=NAME` continues
a run on purpose after checking its config hash.
"""

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from beit3_core.checkpoint import export_released_checkpoint, load_checkpoint
from beit3_core.config import get_config
from beit3_core.runtime.checkpoint import MODEL_FILE, STATE_FILE
from beit3_core.runtime.driver import DriverRun
from beit3_core.runtime.tracking import TrackedRun
from beit3_core.train.config import PretrainConfig
from beit3_core.train.streams import SYNTHETIC, read_shard_refs

logger = logging.getLogger(__name__)

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


def run_pretraining(cfg: PretrainConfig, resume: str | None = None) -> PretrainResult:
    """Pretrain (or ITC-tune) with Ray Train as configured; `resume` names an earlier run in the same storage."""
    from beit3_core.train.loop import train_loop_per_worker

    model_config, data_info = resolve_model_config(cfg)
    run = DriverRun(step_name(cfg), cfg.run, cfg.fingerprint(), resume)
    if not resume:
        run.ensure_new()
    params = cfg.flat() | {f"model_config.{k}": str(v) for k, v in model_config.items()}
    info = {"config": cfg.to_dict(), "model_config": model_config}
    with run.open_tracking({"beit3.step": step_name(cfg)}, params, info) as tracked:
        loop_config = {"config": cfg.to_dict(), "model_config": model_config, "data_info": data_info}
        result = run.fit(train_loop_per_worker, loop_config, f"{step_name(cfg)} {run.name}")
        final_dir = run.run_dir / "final"
        run.export(result, final_dir, (MODEL_FILE, STATE_FILE))
        model = load_checkpoint(final_dir / MODEL_FILE)
        released = export_released_checkpoint(model, final_dir / "model_released_layout.pth")
        run.upload(final_dir / MODEL_FILE, released, final_dir / STATE_FILE)
        report = _log_artifacts(tracked, cfg, model, data_info, final_dir)
    itc = cfg.model.objective == "itc"
    return PretrainResult(
        run.name,
        run.run_dir,
        tracked.run_id,
        run.tracking_uri,
        final_dir / MODEL_FILE,
        released,
        dict(result.metrics or {}),
        {} if itc else report,
        report if itc else {},
    )


def _log_artifacts(tracked: TrackedRun, cfg: PretrainConfig, model, data_info: dict, final_dir: Path) -> dict:

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
            tracked.log_metrics({f"final_accuracy_{direction}": values["accuracy"]})
            tracked.log_metrics({f"final_chance_{direction}": values["chance"]})
    else:
        report = masked_token_report(model, batches)
        (final_dir / "masked_token_accuracy.json").write_text(json.dumps(report, indent=2))
        for kind, values in report.items():
            tracked.log_metrics({f"final_accuracy_{kind}": values["accuracy"]})
            tracked.log_metrics({f"final_baseline_{kind}": values["baseline"]})
    tracked.log_config(f"{step_name(cfg)}_config.yaml", cfg.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        batch = batches[0]
        stream = batch.image or batch.pair
        if stream is not None and cfg.model.objective != "itc":
            png = masked_prediction_grid(model, stream, Path(tmp) / "masked_predictions.png")
            tracked.log_file(png)
    tracked.log_file(final_dir / MODEL_FILE, "checkpoint")
    return report
