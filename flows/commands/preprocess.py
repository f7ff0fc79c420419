"""`beit3 preprocess CONFIG`: raw sources -> validated, tokenized shards on Ray (see configs/preprocess_demo.yaml)."""

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("preprocess", help="validate, tokenize and shard the configured sources on Ray")
    parser.add_argument("config", type=Path)
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from preprocessing.config import load_preprocess_config
    from preprocessing.pipeline import run_preprocessing

    cfg = load_preprocess_config(args.config, {"ray_address": args.ray_address} if args.ray_address else None)
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.no_progress) as progress:
        report = run_preprocessing(cfg, progress=progress)

    manifest = report.manifest
    table = Table(title=f"Preprocessed into {report.output} (dataset {manifest['dataset_version']})")
    for column in ("source", "format", "records in", "records out", "quarantined", "shards"):
        table.add_column(column, justify="left" if column in ("source", "format") else "right")
    for name, src in manifest["sources"].items():
        table.add_row(
            name,
            src["format"],
            str(src["records_in"]),
            str(src["records_out"]),
            str(src["records_quarantined"]),
            str(len(src["shards"])),
        )
    console.print(table)
    if report.reasons:
        console.print("rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items())))
    visual = manifest["visual_tokenizer"]
    console.print(
        f"visual tokenizer {visual['tokenizer_id']}: {visual['num_codes']} codes, codebook usage "
        f"{100 * visual['codebook_usage']:.1f}% on {visual['holdout_images']} held-out images; "
        f"text tokenizer {manifest['text_tokenizer']['model_id']} ({manifest['text_tokenizer']['vocab_size']} ids)"
    )
    console.print(
        f"shards built {len(report.shards_built)}, reused {len(report.shards_reused)}; "
        f"{manifest['timings']['seconds']:.0f} s; quarantine: {report.output / 'quarantine.parquet'}"
    )
    return 0
