"""Report step: the results table written to `<run_dir>/results.json`.

Per unit: `metrics` (the run from the pretrained checkpoint), `baseline` (the unit's trivial baseline on the same
split, with standard errors; `evaluation.baselines`), `margin` (metric minus baseline, in standard errors of the
baseline) and, with `compare_scratch`, `scratch` (the same fine-tune from random initialisation, with its own
margin). `pretrain` holds the MDM run's metrics, including its most-frequent-token baselines.
"""

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from beit3_core.runtime.atomic import write_text_atomic
from flows.steps.finetune import SCRATCH
from flows.steps.keys import code_hash, step_key
from flows.steps.results_table import flat_unit_metrics, margins

RESULTS_FILE = "results.json"


def report_key_of(run_dir: str, dataset: dict, pretrained: dict, benchmarks: list[dict]) -> str:
    inputs = {"dataset": dataset["dataset_version"], "pretrain": pretrained["checkpoint_sha256"]}
    code = code_hash("flows/steps/report.py", "flows/steps/results_table.py")
    return step_key("report", run_dir, inputs, _table(pretrained, benchmarks), code)


def report_key(_ctx, params: dict) -> str:
    return report_key_of(params["run_dir"], params["dataset"], params["pretrained"], params["benchmarks"])


@task(cache_key_fn=report_key, retries=2, retry_delay_seconds=[2, 10])
def report(run_dir: str, dataset: dict, pretrained: dict, benchmarks: list[dict]) -> dict:
    results = {"dataset_version": dataset["dataset_version"], **_table(pretrained, benchmarks)}
    path = Path(run_dir) / RESULTS_FILE
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True))
    rows = [{"benchmark": t, "status": b["status"], **flat_unit_metrics(b)} for t, b in results["benchmarks"].items()]
    if rows:
        create_table_artifact(key="beit3-results", table=rows, description=f"Benchmark results in {path}")
    return {"results": results, "files": [str(path)], "key": report_key_of(run_dir, dataset, pretrained, benchmarks)}


def _table(pretrained: dict, benchmarks: list[dict]) -> dict:
    entries: dict[str, dict] = {}
    for b in sorted(benchmarks, key=lambda b: b.get("kind") == SCRATCH):  # pretrained runs first
        keys = ("status", "metrics", "mlflow_run_id", "init_checkpoint", "evaluated_from", "checkpoint", "reason")
        keys += ("baseline",)
        entry = {k: b[k] for k in keys if k in b}
        if "metrics" in entry and "baseline" in entry:
            entry["margin"] = margins(entry["metrics"], entry["baseline"])
        if b.get("kind") == SCRATCH:
            entries.setdefault(b["task"], {"status": "missing"})["scratch"] = entry
        else:
            entries[b["task"]] = entry
    pretrain = {k: pretrained[k] for k in ("run_name", "mlflow_run_id", "checkpoint", "metrics")}
    return {"pretrain": pretrain, "benchmarks": entries}
