"""Report step: the results table (benchmark -> metrics) written to `<run_dir>/results.json`."""

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from beit3_core.runtime.atomic import write_text_atomic
from flows.steps.keys import code_hash, step_key

RESULTS_FILE = "results.json"


def report_key_of(run_dir: str, dataset: dict, pretrained: dict, benchmarks: list[dict]) -> str:
    inputs = {"dataset": dataset["dataset_version"], "pretrain": pretrained["checkpoint_sha256"]}
    return step_key("report", run_dir, inputs, _table(pretrained, benchmarks), code_hash("flows/steps/report.py"))


def report_key(_ctx, params: dict) -> str:
    return report_key_of(params["run_dir"], params["dataset"], params["pretrained"], params["benchmarks"])


@task(cache_key_fn=report_key, retries=2, retry_delay_seconds=[2, 10])
def report(run_dir: str, dataset: dict, pretrained: dict, benchmarks: list[dict]) -> dict:
    results = {"dataset_version": dataset["dataset_version"], **_table(pretrained, benchmarks)}
    path = Path(run_dir) / RESULTS_FILE
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True))
    rows = [{"benchmark": t, "status": b["status"], **b.get("metrics", {})} for t, b in results["benchmarks"].items()]
    if rows:
        create_table_artifact(key="beit3-results", table=rows, description=f"Benchmark results in {path}")
    return {"results": results, "files": [str(path)], "key": report_key_of(run_dir, dataset, pretrained, benchmarks)}


def _table(pretrained: dict, benchmarks: list[dict]) -> dict:
    entries = {}
    for b in benchmarks:
        entry = {k: b[k] for k in ("status", "metrics", "mlflow_run_id", "checkpoint", "reason") if k in b}
        entries[b["task"]] = entry
    pretrain = {k: pretrained[k] for k in ("run_name", "mlflow_run_id", "checkpoint", "metrics")}
    return {"pretrain": pretrain, "benchmarks": entries}
