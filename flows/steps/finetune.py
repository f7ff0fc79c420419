"""Fine-tune + evaluate step: one task per configured benchmark, started from the pretrained checkpoint.

Calls `evaluation.finetune.run_finetune(task, config, init_checkpoint) -> {"metrics", "mlflow_run_id",
"checkpoint"}`. The config is the benchmark's overrides over the pipeline's defaults (`tokenizer`: the shards'
SentencePiece model, `storage_path`: `<storage>/finetune/runs`, see `flows.steps.config`), plus `output_dir`
(`<run_dir>/finetune/<task>`), `mlflow_tracking_uri`, `mlflow_experiment` and `ray_address` (when set), all
flat keys that `evaluation.finetune.config` maps to their sections. The run it returns is nested under the
pipeline's run.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

from prefect import task

from flows.settings import Settings, ensure_ray
from flows.steps.keys import code_hash, step_key
from flows.steps.tracking import Tracking

ENTRY_MODULE = "evaluation.finetune"


def finetune_entry_point() -> Callable:
    """`run_finetune`, looked up at call time (the flow tests install a counting stand-in module)."""
    return importlib.import_module(ENTRY_MODULE).run_finetune


def finetune_key_of(task_name: str, config: dict, pretrained: dict, run_dir: str) -> str:
    code = code_hash("evaluation", "flows/steps/finetune.py")
    return step_key(f"finetune-{task_name}", config, pretrained["checkpoint_sha256"], run_dir, code)


def finetune_key(_ctx, params: dict) -> str:
    return finetune_key_of(params["task_name"], params["config"], params["pretrained"], params["run_dir"])


@task(cache_key_fn=finetune_key)
def finetune(
    task_name: str, config: dict, pretrained: dict, run_dir: str, settings: Settings, tracking: Tracking
) -> dict:
    run_finetune = finetune_entry_point()
    extra = {"output_dir": str(Path(run_dir) / "finetune" / task_name), "mlflow_tracking_uri": tracking.uri}
    extra |= {"ray_address": settings.ray_address} if settings.ray_address else {}
    ensure_ray(settings)
    out = run_finetune(
        task_name, config | extra | {"mlflow_experiment": tracking.experiment_name}, pretrained["checkpoint"]
    )
    if out.get("mlflow_run_id"):
        tracking.adopt(
            out["mlflow_run_id"], f"finetune[{task_name}]", {"beit3.pretrain_run": pretrained["mlflow_run_id"]}
        )
    checkpoint = str(out["checkpoint"]) if out.get("checkpoint") else None
    return {
        "task": task_name,
        "status": "completed",
        "metrics": dict(out["metrics"]),
        "mlflow_run_id": out.get("mlflow_run_id"),
        "checkpoint": checkpoint,
        "files": [checkpoint] if checkpoint else [],
        "key": finetune_key_of(task_name, config, pretrained, run_dir),
    }
