"""`beit3 run CONFIG [--only STEP] [--from STEP] [--force STEP] [--compare-scratch]`: run a pipeline YAML's DAG.

Local by default: an ephemeral Prefect server and MLflow store under `<run_dir>/.state`, a local Ray; set
`PREFECT_API_URL`, `RAY_ADDRESS`, `MLFLOW_TRACKING_URI` for a cluster (see `flows.settings`). Steps: ingest,
preprocess, pretrain, finetune, finetune-scratch (with `--compare-scratch`: every benchmark fine-tuned again from
random initialisation), report; `finetune:vqav2` names one benchmark, `ingest:<source>` one source.
Exit codes: 0 done, 1 a step failed (its name and log tail on stderr), 2 a bad config or step name.
"""

import argparse
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the pipeline DAG (cached steps are skipped)")
    parser.add_argument("config", type=Path, help="pipeline YAML (see configs/pipeline_demo.yaml)")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--only", action="append", default=[], metavar="STEP", help="run only this step (repeatable)")
    select.add_argument("--from", dest="from_step", metavar="STEP", help="run this step and every later one")
    parser.add_argument("--force", action="append", default=[], metavar="STEP", help="ignore this step's cache ('all')")
    parser.add_argument(
        "--compare-scratch",
        action="store_true",
        default=None,
        help="also fine-tune every benchmark from random initialisation (default: the config's compare_scratch)",
    )
    parser.set_defaults(func=run)


def _split(items: list[str]) -> list[str]:
    return [part for item in items for part in item.split(",") if part]


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.settings import configure_environment
    from flows.steps.config import load_pipeline_config

    try:
        cfg = load_pipeline_config(args.config)
    except (OSError, ValueError, ValidationError) as error:
        print(f"beit3 run: error: {args.config}: {error}", file=sys.stderr)
        return 2
    configure_environment(cfg.run_dir)  # before prefect is imported
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Prefect API call otherwise

    from flows.pipeline import beit3_pipeline
    from flows.steps.runner import MissingStepOutput, StepFailed

    try:
        out = beit3_pipeline(
            str(args.config.resolve()), _split(args.only), args.from_step, _split(args.force), args.compare_scratch
        )
    except StepFailed as failure:
        print(f"beit3 run: {failure}", file=sys.stderr)
        return 1
    except (MissingStepOutput, ValueError) as error:
        print(f"beit3 run: error: {error}", file=sys.stderr)
        return 2
    finally:
        _stop_ray()
    print_summary(out)
    return 0


def _stop_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts (per answer type, per domain) to `a/b` keys; keep numbers only."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def print_summary(out: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    steps = Table(title=f"beit3-pipeline flow run {out['flow_run_id']}")
    for column in ("step", "state", "cache key"):
        steps.add_column(column)
    for label, step in out["steps"].items():
        steps.add_row(escape(label), step["state"], step.get("key") or "-")
    console.print(steps)
    results = out.get("results")
    if results:
        from flows.commands.report import results_table
        from flows.steps.results_table import flat_unit_metrics, result_rows

        table = Table(title=f"benchmark runs (dataset {results['dataset_version']})")
        for column in ("benchmark", "status", "metrics"):
            table.add_column(column)
        for task, entry in results["benchmarks"].items():
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in _numbers(entry.get("metrics") or {}).items())
            table.add_row(task, entry["status"], escape(metrics or entry.get("reason", "")))
        console.print(table)
        benchmarks = {unit: flat_unit_metrics(entry) for unit, entry in results["benchmarks"].items()}
        rows = result_rows(benchmarks, reference=False, pretrain=(results.get("pretrain") or {}).get("metrics"))
        reported = [row for row in rows if row["ours"] is not None]
        console.print(results_table(reported, "headline metrics against their trivial baselines"))
        console.print(f"results: {Path(out['run_dir']) / 'results.json'}")
    console.print(f"MLflow parent run {out['mlflow_run_id']}")
    _print_ui_hints(console, Path(out["run_dir"]))


def _print_ui_hints(console, run_dir: Path) -> None:
    """Where the run's records live and how to look at them (both UIs bind to 127.0.0.1 only)."""
    import os

    from flows.settings import Settings, state_dir

    uri = Settings().tracking_uri(run_dir)
    console.print(
        f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 -> http://127.0.0.1:5000"
    )
    if os.environ.get("PREFECT_API_URL"):
        console.print(f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')}")
    else:
        home = (state_dir(run_dir) / "prefect").resolve()
        console.print(
            f"Prefect UI: PREFECT_HOME={home} prefect server start --host 127.0.0.1 --port 4200"
            " -> http://127.0.0.1:4200"
        )
