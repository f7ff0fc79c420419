"""`beit3 status CONFIG`: each pipeline step's last state and whether it is stale (would rerun now).

Reads the run directory's ledger and recomputes the cache keys from the current raw files and config; starts
no Prefect server and no Ray. Exit code 0 when nothing is stale, 3 when some step is, 2 for a bad config.
"""

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="last state of each pipeline step and whether it is stale")
    parser.add_argument("config", type=Path, help="pipeline YAML")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flows.steps.status import pipeline_status

    try:
        rows = pipeline_status(args.config)
    except (OSError, ValueError, ValidationError) as error:
        print(f"beit3 status: error: {args.config}: {error}", file=sys.stderr)
        return 2
    table = Table(title=f"beit3-pipeline {args.config}")
    for column in ("step", "last state", "updated", "stale", "why"):
        table.add_column(column)
    for row in rows:
        table.add_row(escape(row.label), row.last_state, row.updated, "yes" if row.stale else "no", escape(row.reason))
    Console(width=160).print(table)
    return 3 if any(row.stale for row in rows) else 0
