"""Fine-tune + evaluate step: one task per configured benchmark, started from the pretrained checkpoint.

Calls `evaluation.finetune.run_finetune(task, config, init_checkpoint) -> {"metrics", "mlflow_run_id",
"checkpoint"}`. The config is the benchmark's overrides over the pipeline's defaults (`tokenizer`: the shards'
SentencePiece model, `storage_path`: `<run_dir>/finetune/runs`), plus `output_dir` (`<run_dir>/finetune/<task>`),
`mlflow_tracking_uri`, `mlflow_experiment` and `ray_address` (when set), all flat keys that
`evaluation.finetune.config` maps to their sections. The run it returns is nested under the pipeline's run. Until that
module exists the step ends in the state `NotAvailable` (a kind of Completed) and is never cached, so the first
run after the module lands fine-tunes every benchmark.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

from prefect import task
from prefect.states import Completed, State

from flows.settings import Settings, ensure_ray
from flows.steps.keys import code_hash, step_key
from flows.steps.tracking import Tracking

ENTRY_MODULE = "evaluation.finetune"


def finetune_entry_point() -> Callable | str:
    """`run_finetune`, or why it is not available."""
    try:
        module = importlib.import_module(ENTRY_MODULE)
    except ModuleNotFoundError as error:
        if error.name in (ENTRY_MODULE, "evaluation"):
            return f"{ENTRY_MODULE} is not available yet (no module {error.name!r})"
        raise
    fn = getattr(module, "run_finetune", None)
    return fn if callable(fn) else f"{ENTRY_MODULE} has no run_finetune()"


def finetune_key_of(task_name: str, config: dict, pretrained: dict, run_dir: str) -> str | None:
    if not callable(finetune_entry_point()):
        return None  # never cache "not available"
    code = code_hash("evaluation", "flows/steps/finetune.py")
    return step_key(f"finetune-{task_name}", config, pretrained["checkpoint_sha256"], run_dir, code)


def finetune_key(_ctx, params: dict) -> str | None:
    return finetune_key_of(params["task_name"], params["config"], params["pretrained"], params["run_dir"])


@task(cache_key_fn=finetune_key)
def finetune(
    task_name: str, config: dict, pretrained: dict, run_dir: str, settings: Settings, tracking: Tracking
) -> dict | State:
    run_finetune = finetune_entry_point()
    if not callable(run_finetune):
        data = {"task": task_name, "status": "not_available", "reason": run_finetune}
        return Completed(name="NotAvailable", message=run_finetune, data=data)
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
