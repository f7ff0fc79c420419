"""`beit3 report RUN [--reference paper]`: every unit's headline metrics of one pipeline run.

RUN is the MLflow parent run id the pipeline prints (with `--config` or `--tracking-uri` to find its store), or a
`results.json`. Each metric stands beside the unit's trivial baseline on the same test set (`baseline +- stderr`)
and the margin over it in those standard errors (`margin`); with a `--compare-scratch` run, the fine-tune from
random initialisation and its margin too; the MDM pretraining rows show masked-token accuracy against the
most-frequent-token baseline and their ratio. With `--reference paper` the paper's giant-model numbers and the
released base and large checkpoints' numbers stand beside ours, labelled by model size; units the run has not
reported show as missing.
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


def _benchmarks(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """(name, unit -> flat metrics, pretraining metrics) of a results.json or an MLflow parent run."""
    from flows.steps.results_table import flat_unit_metrics

    if Path(args.run).is_file():
        results = json.loads(Path(args.run).read_text())
        benchmarks = {unit: flat_unit_metrics(entry) for unit, entry in results["benchmarks"].items()}
        return args.run, benchmarks, (results.get("pretrain") or {}).get("metrics") or {}
    import mlflow

    from flows.commands.compare import tracking_uri_of
    from flows.steps.compare import load_run_metrics

    uri = tracking_uri_of(args)
    if not uri:
        raise ValueError("give --config, --tracking-uri or MLFLOW_TRACKING_URI (or a results.json)")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (metrics,) = load_run_metrics(client, [args.run])
    logged = client.get_run(args.run).data.metrics
    pretrain = {k.removeprefix("pretrain/"): v for k, v in logged.items() if k.startswith("pretrain/")}
    return f"{metrics.name} ({metrics.run_id})", metrics.benchmarks, pretrain


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(rows: list[dict], title: str, reference: bool = False):
    """The rich table of `flows.steps.results_table.result_rows` (also printed by `beit3 run`)."""
    from rich.table import Table

    from flows.steps.reference import MODEL_SIZES

    scratch = any(row["scratch"] is not None for row in rows)
    columns = ["unit", "metric", "ours"] + ["scratch"] * scratch + ["baseline +- stderr", "margin"]
    columns += ["scratch margin"] * scratch + (list(MODEL_SIZES) + ["note"] if reference else [])
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("unit", "metric", "note") else "right")
    for row in rows:
        base = _number(row["baseline"])
        if row["baseline_stderr"] is not None:
            base += f" +- {row['baseline_stderr']:.2f}"
        if row["ratio"] is not None:  # MDM rows: the ratio over the most-frequent-token baseline
            margin = f"{row['ratio']:.2f}x"
        else:
            margin = "-" if row["margin"] is None else f"{row['margin']:.1f} se"
        cells = [row["unit"], row["metric"], "missing" if row["ours"] is None else f"{row['ours']:.2f}"]
        cells += [_number(row["scratch"])] * scratch + [base, margin]
        cells += ["-" if row["scratch_margin"] is None else f"{row['scratch_margin']:.1f} se"] * scratch
        if reference:
            cells += [_number(row[size]) for size in MODEL_SIZES] + [row["note"]]
        table.add_row(*cells)
    return table


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from rich.console import Console

    from flows.steps.results_table import result_rows

    try:
        name, benchmarks, pretrain = _benchmarks(args)
    except (MlflowException, ValueError, KeyError) as error:
        print(f"beit3 report: error: {error}", file=sys.stderr)
        return 2
    rows = result_rows(benchmarks, reference=bool(args.reference), pretrain=pretrain)
    # Piped output is not wrapped at 80 columns: the reference table is wider.
    Console(width=None if sys.stdout.isatty() else 200).print(results_table(rows, f"results of {name}", args.reference))
    return 0
