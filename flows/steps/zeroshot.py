"""Zero-shot step: one task per configured unit, evaluating the ITC checkpoint with no training.

First the honesty check (`evaluation.leakage`): the unit's test images and captions must not be in the shards
that pretraining and ITC read, else the step fails naming the overlapping records. Then
`evaluation.zeroshot.evaluate_zeroshot` (224 px, each image and caption embedded once, chunked scoring); the
metrics go to a nested MLflow run and `<run_dir>/zeroshot/<unit>_metrics.json`, beside the unit's trivial
baseline (a random ranking of the same test split, `evaluation.baselines`) as `baseline_<metric>` and
`baseline_<metric>_stderr`.
"""

import json
from pathlib import Path

from prefect import task

from beit3_core.runtime.atomic import write_text_atomic
from evaluation.baselines import zeroshot_baseline
from evaluation.leakage import check_zeroshot_split
from evaluation.zeroshot import evaluate_zeroshot, read_zeroshot_split
from flows.steps.keys import code_hash, step_key
from flows.steps.tracking import Tracking


def zeroshot_key_of(unit: str, config: dict, itc_out: dict, dataset: dict, run_dir: str) -> str:
    code = code_hash("evaluation", "beit3_core", "flows/steps/zeroshot.py")
    inputs = (itc_out["checkpoint_sha256"], dataset["dataset_version"])
    return step_key(f"zeroshot-{unit}", config, *inputs, run_dir, code)


def zeroshot_key(_ctx, params: dict) -> str:
    p = params
    return zeroshot_key_of(p["unit"], p["config"], p["itc_out"], p["dataset"], p["run_dir"])


@task(cache_key_fn=zeroshot_key)
def zeroshot(unit: str, config: dict, itc_out: dict, dataset: dict, run_dir: str, tracking: Tracking) -> dict:
    from beit3_core.text_tokenizer import XLMRTokenizer

    split = read_zeroshot_split(unit, config["root"])
    checked = check_zeroshot_split(unit, split, [dataset["output"]])
    metrics = evaluate_zeroshot(
        unit,
        itc_out["checkpoint"],
        config["root"],
        XLMRTokenizer(config["tokenizer"]),
        img_size=config["img_size"],
        batch_size=config["batch_size"],
        chunk_size=config["chunk_size"],
        text_len=config["text_len"],
    )
    path = Path(run_dir) / "zeroshot" / f"{unit}_metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(metrics | checked, indent=2))
    baseline = zeroshot_baseline(unit, config["root"])
    logged = metrics | checked | {f"baseline_{k}": v for k, v in baseline["metrics"].items()}
    logged |= {f"baseline_{k}_stderr": v for k, v in baseline["stderr"].items()}
    params = dict(config) | {"checkpoint": itc_out["checkpoint"]}
    run_id = tracking.nested_run(f"zeroshot[{unit}]", params, logged, {"beit3.itc_run": itc_out["run_name"]})
    return {
        "task": unit,
        "status": "completed",
        "metrics": metrics,
        "baseline": baseline,
        "mlflow_run_id": run_id,
        "checkpoint": itc_out["checkpoint"],
        "files": [str(path)],
        "key": zeroshot_key_of(unit, config, itc_out, dataset, run_dir),
    }
