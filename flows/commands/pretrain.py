"""`beit3 pretrain CONFIG`: MDM pretraining on Ray Train, logged to MLflow."""

import argparse
from pathlib import Path

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pretrain", help="MDM pretraining on Ray Train (see configs/pretrain_*.yaml)")
    parser.add_argument("config", type=Path, help="YAML: `recipe:` plus section overrides")
    parser.add_argument("--resume", metavar="RUN_NAME", help="continue this earlier run from its last checkpoint")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one field, e.g. --set run.steps=50 (value parsed as YAML)",
    )
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        section, field = key.split(".", 1)
        overrides.setdefault(section, {})[field] = yaml.safe_load(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    from beit3_core.train.config import load_config
    from beit3_core.train.launcher import run_pretraining

    cfg = load_config(args.config, parse_overrides(args.overrides))
    result = run_pretraining(cfg, resume=args.resume)
    metrics = result.metrics
    print(f"run {result.run_name}: {cfg.run.steps} steps, final loss {metrics.get('loss', float('nan')):.3f}")
    for kind, values in result.masked_token_accuracy.items():
        print(
            f"  masked-token accuracy {kind:<10} {values['accuracy']:.3f} "
            f"(most-frequent-token baseline {values['baseline']:.3f}, {values['num_masked']} masked)"
        )
    print(f"checkpoint: {result.final_checkpoint}")
    print(f"released layout: {result.released_checkpoint}")
    print(f"MLflow run {result.mlflow_run_id} in {result.tracking_uri}")
    print(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return 0
