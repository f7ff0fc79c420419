"""A fast stand-in for `evaluation.finetune`, installed into `sys.modules` by the flow tests.

Its metrics are a deterministic function of the checkpoint bytes and the task config, so a changed
checkpoint or config shows up in the results, and every call is counted per task.
"""

import hashlib
import json
from collections import Counter
from pathlib import Path

CALLS: Counter = Counter()


def run_finetune(task: str, config: dict, init_checkpoint: str) -> dict:
    CALLS[task] += 1
    digest = hashlib.sha256(Path(init_checkpoint).read_bytes() + json.dumps(config, sort_keys=True).encode())
    score = 50 + int(digest.hexdigest()[:4], 16) % 4000 / 100  # 50.00 .. 89.99
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.safetensors"
    checkpoint.write_bytes(digest.digest())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=config["mlflow_tracking_uri"])
    experiment = client.get_experiment_by_name(config["mlflow_experiment"])
    run = client.create_run(experiment.experiment_id, run_name=f"finetune-{task}")
    client.log_metric(run.info.run_id, "accuracy", score)
    client.set_terminated(run.info.run_id, "FINISHED")
    return {
        "metrics": {"accuracy": score, "epochs": config.get("epochs", 1)},
        "mlflow_run_id": run.info.run_id,
        "checkpoint": str(checkpoint),
    }
