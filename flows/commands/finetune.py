"""`beit3 finetune TASK CONFIG`: fine-tune and evaluate one benchmark task on Ray Train, logged to MLflow.

Prints the official metrics of the evaluation split as one JSON line, then where the model, the submission
file and the MLflow run are.
"""

import argparse
from pathlib import Path

from flows.overrides import add_override_argument, parse_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune + evaluate a benchmark task on Ray Train (see configs/finetune_*.yaml)"
    )
    parser.add_argument("task", help="benchmark task, e.g. imagenet, coco_retrieval, vqav2")
    parser.add_argument("config", type=Path, help="YAML: `task:` plus data/model/optim/run sections")
    parser.add_argument("--init", metavar="CHECKPOINT", help="initial weights (ours .safetensors or a released .pth)")
    add_override_argument(parser, "run.epochs=1")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evaluation.finetune import load_finetune_config, run_finetune
    from flows.commands.evaluate import print_result

    cfg = load_finetune_config(args.config, args.task, parse_overrides(args.overrides))
    print_result(run_finetune(args.task, cfg, init_checkpoint=args.init))
    return 0
