"""`beit3 pretrain CONFIG`: MDM pretraining on Ray Train, logged to MLflow."""

import argparse
from pathlib import Path

from flows.overrides import add_override_argument, parse_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pretrain", help="MDM pretraining on Ray Train (see configs/pretrain_*.yaml)")
    parser.add_argument("config", type=Path, help="YAML: `recipe:` plus section overrides")
    parser.add_argument("--resume", metavar="RUN_NAME", help="continue this earlier run from its last checkpoint")
    add_override_argument(parser, "run.steps=50")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beit3_core.train.config import load_config
    from beit3_core.train.launcher import run_pretraining

    cfg = load_config(args.config, parse_overrides(args.overrides))
    print_result(cfg, run_pretraining(cfg, resume=args.resume))
    return 0


def print_result(cfg, result) -> None:
    """The run's final loss, its accuracy against the trivial baseline, and where the outputs are."""
    metrics = result.metrics
    print(f"run {result.run_name}: {cfg.run.steps} steps, final loss {metrics.get('loss', float('nan')):.3f}")
    for kind, values in result.masked_token_accuracy.items():
        print(
            f"  masked-token accuracy {kind:<10} {values['accuracy']:.3f} "
            f"(most-frequent-token baseline {values['baseline']:.3f}, {values['num_masked']} masked)"
        )
    for direction, values in result.retrieval_accuracy.items():
        print(
            f"  in-batch retrieval accuracy {direction} {values['accuracy']:.3f} "
            f"(chance {values['chance']:.3f}, {values['num_pairs']} pairs)"
        )
    print(f"checkpoint: {result.final_checkpoint}")
    print(f"released layout: {result.released_checkpoint}")
    print(f"MLflow run {result.mlflow_run_id} in {result.tracking_uri}")
    print(f"  open it with: mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
