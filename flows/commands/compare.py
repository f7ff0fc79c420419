"""`beit3 compare RUN_ID... [--config CONFIG | --tracking-uri URI] [--out PNG]`: pipeline runs side by side.

RUN_IDs are the MLflow parent runs the pipeline prints (`MLflow parent run ...`). Prints the benchmark metrics
as a table with one column per run, writes a radar chart PNG (one axis per benchmark, as in BEiT-3's Figure 1)
and logs both to a new MLflow run `compare` in the experiment of the first run.
"""

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="benchmark metrics of pipeline runs side by side + radar chart")
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="MLflow parent run ids of pipeline runs")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="pipeline YAML whose MLflow store holds the runs")
    where.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: compare-<ids>.png)")
    parser.set_defaults(func=run)


def tracking_uri_of(args: argparse.Namespace) -> str | None:
    """The MLflow store of `--config` (its run directory's), else `--tracking-uri`, else MLFLOW_TRACKING_URI."""
    from flows.settings import Settings

    settings = Settings()
    if args.config:
        from flows.steps.config import load_pipeline_config

        return settings.tracking_uri(load_pipeline_config(args.config).run_dir)
    return args.tracking_uri or settings.mlflow_tracking_uri


def run(args: argparse.Namespace) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.table import Table

    from flows.steps.compare import comparison_table, load_run_metrics, log_comparison, radar_chart

    uri = tracking_uri_of(args)
    if not uri:
        print("beit3 compare: error: give --config, --tracking-uri or MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        runs = load_run_metrics(client, args.run_ids)
        out = args.out or Path(f"compare-{'-'.join(r[:8] for r in args.run_ids)}.png")
        png = radar_chart(runs, out)
    except (MlflowException, ValueError) as error:
        print(f"beit3 compare: error: {error}", file=sys.stderr)
        return 2
    rows = comparison_table(runs)
    experiment_id = client.get_run(args.run_ids[0]).info.experiment_id
    compare_run = log_comparison(client, experiment_id, runs, png, rows)

    table = Table(title="benchmark metrics")
    table.add_column("benchmark")
    table.add_column("metric")
    for r in runs:
        table.add_column(f"{r.name}\n{r.run_id[:8]}", justify="right")
    for row in rows:
        values = [row[r.run_id] for r in runs]
        table.add_row(row["benchmark"], row["metric"], *("-" if v is None else f"{v:.4g}" for v in values))
    console = Console()
    console.print(table)
    console.print(f"radar chart: {png.resolve()}")
    console.print(f"logged to MLflow run {compare_run} ({uri})")
    return 0
