"""`beit3 report RUN [--reference paper]`: every unit's headline metrics of one pipeline run.

RUN is the MLflow parent run id the pipeline prints (with `--config` or `--tracking-uri` to find its store), or a
`results.json`. With `--reference paper` the paper's giant-model numbers and the released base and large
checkpoints' numbers stand beside ours, labelled by model size; units the run has not reported show as missing.
"""

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="a pipeline run's results, optionally beside the paper's numbers")
    parser.add_argument("run", metavar="RUN", help="MLflow parent run id of a pipeline run, or a results.json")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="pipeline YAML whose MLflow store holds the run")
    where.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--reference", choices=["paper"], help="print the published BEiT-3 numbers beside ours")
    parser.set_defaults(func=run)


def _benchmarks(args: argparse.Namespace) -> tuple[str, dict]:
    if Path(args.run).is_file():
        results = json.loads(Path(args.run).read_text())
        return args.run, {unit: entry.get("metrics", {}) for unit, entry in results["benchmarks"].items()}
    import mlflow

    from flows.commands.compare import tracking_uri_of
    from flows.steps.compare import load_run_metrics

    uri = tracking_uri_of(args)
    if not uri:
        raise ValueError("give --config, --tracking-uri or MLFLOW_TRACKING_URI (or a results.json)")
    (metrics,) = load_run_metrics(mlflow.MlflowClient(tracking_uri=uri), [args.run])
    return f"{metrics.name} ({metrics.run_id})", metrics.benchmarks


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.table import Table

    from flows.steps.reference import MODEL_SIZES
    from flows.steps.results_table import result_rows

    try:
        name, benchmarks = _benchmarks(args)
    except (MlflowException, ValueError, KeyError) as error:
        print(f"beit3 report: error: {error}", file=sys.stderr)
        return 2
    rows = result_rows(benchmarks, reference=bool(args.reference))
    table = Table(title=f"results of {name}")
    columns = ["unit", "metric", "ours"] + (list(MODEL_SIZES) + ["note"] if args.reference else [])
    for column in columns:
        table.add_column(column, justify="left" if column in ("unit", "metric", "note") else "right")
    for row in rows:
        cells = [row["unit"], row["metric"], "missing" if row["ours"] is None else f"{row['ours']:.2f}"]
        if args.reference:
            cells += ["-" if row[size] is None else f"{row[size]:.2f}" for size in MODEL_SIZES] + [row["note"]]
        table.add_row(*cells)
    # Piped output is not wrapped at 80 columns: the reference table is wider.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
