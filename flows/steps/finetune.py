"""Fine-tune + evaluate step: one task per configured benchmark, started from the pretrained checkpoint, and
(`compare_scratch`) one more per benchmark started from random initialisation.

Calls `evaluation.finetune.run_finetune(task, config, init_checkpoint) -> {"metrics", "mlflow_run_id",
"checkpoint"}`. The config is the benchmark's overrides over the pipeline's defaults (`tokenizer`: the shards'
SentencePiece model, `storage_path`: `<storage>/finetune/runs`, see `flows.steps.config`), plus `output_dir`
(`<run_dir>/finetune/<task>`, or `<run_dir>/finetune-scratch/<task>`), `mlflow_tracking_uri`, `mlflow_experiment`
and `ray_address` (when set), all flat keys that `evaluation.finetune.config` maps to their sections. The run it
returns is nested under the pipeline's run.

A benchmark may name units to evaluate with the fine-tuned model on their own evaluation split (`evaluate_also`,
e.g. NoCaps, which has no training set and is scored with the COCO captioner). Each is an MLflow run of its
own, nested under the pipeline's run, with its own baseline; the step's output lists them under `transfers`,
entries shaped like the step's own.

The step also scores the unit's trivial baseline on the same evaluation split (`evaluation.baselines`) and logs it
on the unit's run as `baseline_<metric>` and `baseline_<metric>_stderr`. The scratch run starts from a random
backbone of the pretrained architecture (`evaluation.baselines.scratch`, drawn with the run's `run.seed`) with the
same config and seed; its cache key follows that architecture, not the pretrained weights.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

from prefect import task

from flows.settings import Settings, ensure_ray
from flows.steps.keys import code_hash, step_key
from flows.steps.tracking import Tracking

ENTRY_MODULE = "evaluation.finetune"
PRETRAINED, SCRATCH = "finetune", "finetune-scratch"
"""Step kinds: from the pretrained checkpoint, from random initialisation."""


def finetune_entry_point() -> Callable:
    """`run_finetune`, looked up at call time (the flow tests install a counting stand-in module)."""
    return importlib.import_module(ENTRY_MODULE).run_finetune


def finetune_key_of(
    task_name: str,
    config: dict,
    pretrained: dict,
    run_dir: str,
    kind: str = PRETRAINED,
    also_evaluate: list[str] | tuple[str, ...] = (),
) -> str:
    code = code_hash("evaluation", "flows/steps/finetune.py")
    extra = (sorted(also_evaluate),) if also_evaluate else ()  # keys of benchmarks without transfers unchanged
    if kind == SCRATCH:
        from evaluation.baselines.scratch import architecture_of

        source = architecture_of(pretrained["checkpoint"])
        return step_key(f"{kind}-{task_name}", config, source, run_dir, code, *extra)
    return step_key(f"finetune-{task_name}", config, pretrained["checkpoint_sha256"], run_dir, code, *extra)


def finetune_key(_ctx, params: dict) -> str:
    p = params
    kind, also = p.get("kind", PRETRAINED), p.get("also_evaluate", ())
    return finetune_key_of(p["task_name"], p["config"], p["pretrained"], p["run_dir"], kind, also)


def with_transfers(outputs: list[dict]) -> list[dict]:
    """Step outputs followed, each, by the units evaluated with its model (the report's rows)."""
    return [entry for out in outputs for entry in (out, *out.get("transfers", []))]


def unit_baseline_of(cfg) -> dict:
    """The unit's trivial baseline on the split the run is scored on (`cfg`: the run's `FinetuneConfig`);
    `{"reason"}` when the config names no benchmark files (a stand-in fine-tuning module in tests)."""
    from evaluation.baselines import unit_baseline

    if not cfg.data.root:
        return {"reason": "no data.root in the fine-tuning config"}
    data = cfg.data
    options = {"train_split": data.train_split, "img_size": cfg.model.img_size, "options": data.options}
    return unit_baseline(cfg.task, data.root, cfg.eval_split, **options)


def log_baseline(tracking: Tracking, run_id: str, baseline: dict) -> None:
    """`baseline_<metric>` and `baseline_<metric>_stderr` on the unit's MLflow run, and the predictor as a tag."""
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(f"baseline_{k}", v, 0, 0) for k, v in baseline.get("metrics", {}).items()]
    metrics += [Metric(f"baseline_{k}_stderr", v, 0, 0) for k, v in baseline.get("stderr", {}).items()]
    tags = [RunTag("beit3.baseline", baseline.get("predictor") or baseline.get("reason", ""))]
    tracking.client().log_batch(run_id, metrics=metrics, tags=tags)


@task(cache_key_fn=finetune_key)
def finetune(
    task_name: str,
    config: dict,
    pretrained: dict,
    run_dir: str,
    settings: Settings,
    tracking: Tracking,
    kind: str = PRETRAINED,
    also_evaluate: list[str] | tuple[str, ...] = (),
) -> dict:
    from evaluation.finetune.config import build_finetune_config

    run_finetune = finetune_entry_point()
    cfg = build_finetune_config(task_name, config)
    baseline = unit_baseline_of(cfg)  # first: unreadable benchmark files fail before training
    out_dir = Path(run_dir) / kind / task_name
    init = pretrained["checkpoint"]
    if kind == SCRATCH:  # the random backbone is drawn with the run's seed
        from evaluation.baselines.scratch import random_init_like

        init = str(random_init_like(pretrained["checkpoint"], out_dir / "random_init.safetensors", cfg.run.seed))
    extra = {"output_dir": str(out_dir), "mlflow_tracking_uri": tracking.uri}
    extra |= {"ray_address": settings.ray_address} if settings.ray_address else {}
    ensure_ray(settings)
    run_config = config | extra | {"mlflow_experiment": tracking.experiment_name}
    # Units scored with the fine-tuned model: their files and baselines are read before training, as above.
    source_cfg = build_finetune_config(task_name, run_config)
    transfer_cfgs = [transfer_config(unit, source_cfg) for unit in also_evaluate]
    transfer_baselines = [unit_baseline_of(c) for c in transfer_cfgs]
    out = run_finetune(task_name, run_config, init)
    if out.get("mlflow_run_id"):
        # The run whose checkpoint the fine-tune starts from: the MDM pretraining, or the ITC step (`init: itc`,
        # whose output names the checkpoint it tuned).
        source = "itc" if "pretrain_checkpoint" in pretrained else "pretrain"
        tags = {f"beit3.{source}_run": pretrained["mlflow_run_id"], "beit3.init": kind}
        tracking.adopt(out["mlflow_run_id"], f"{kind}[{task_name}]", tags)
        log_baseline(tracking, out["mlflow_run_id"], baseline)
    checkpoint = str(out["checkpoint"]) if out.get("checkpoint") else None
    transfers = [
        evaluate_transfer(c, b, checkpoint, tracking, kind, task_name)
        for c, b in zip(transfer_cfgs, transfer_baselines, strict=True)
    ]
    return {
        "task": task_name,
        "kind": kind,
        "status": "completed",
        "metrics": dict(out["metrics"]),
        "baseline": baseline,
        "init_checkpoint": init,
        "mlflow_run_id": out.get("mlflow_run_id"),
        "checkpoint": checkpoint,
        "files": [checkpoint] if checkpoint else [],
        "transfers": transfers,
        "key": finetune_key_of(task_name, config, pretrained, run_dir, kind, also_evaluate),
    }


def transfer_config(unit: str, source_cfg):
    """The source fine-tune's config (data root, tokenizer, image size) as `unit`'s, on the unit's own evaluation
    split, writing beside the source's output directory."""
    import dataclasses

    data = dataclasses.replace(source_cfg.data, eval_split=None)
    out_dir = Path(source_cfg.run.output_dir).parent / f"{source_cfg.task}-{unit}"
    run = dataclasses.replace(source_cfg.run, output_dir=str(out_dir))
    return dataclasses.replace(source_cfg, task=unit, data=data, run=run)


def evaluate_transfer(
    cfg, baseline: dict, checkpoint: str | None, tracking: Tracking, kind: str, source_task: str
) -> dict:
    """Scores the fine-tuned model of `source_task` on `cfg.task`'s evaluation split (`transfer_config`), with the
    unit's `baseline` on that split."""
    from evaluation.finetune import evaluate_checkpoint

    unit = cfg.task
    if checkpoint is None:
        raise ValueError(f"{kind}[{source_task}] wrote no checkpoint to evaluate {unit} with")
    out = evaluate_checkpoint(unit, checkpoint, cfg)
    tracking.adopt(out["mlflow_run_id"], f"{kind}[{source_task}]->{unit}", {"beit3.init": kind})
    log_baseline(tracking, out["mlflow_run_id"], baseline)
    return {
        "task": unit,
        "kind": kind,
        "status": "completed",
        "metrics": dict(out["metrics"]),
        "baseline": baseline,
        "init_checkpoint": checkpoint,
        "evaluated_from": source_task,
        "mlflow_run_id": out["mlflow_run_id"],
    }
