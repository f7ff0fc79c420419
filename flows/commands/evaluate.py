"""`beit3 evaluate TASK CHECKPOINT --config CONFIG`: official metrics of a checkpoint on the task's eval split.

The checkpoint is a fine-tuned model from `beit3 finetune`, or a backbone / MDM / released checkpoint (heads it
lacks stay at init, e.g. zero-shot retrieval). Prints the metrics as one JSON line, then where the submission
file and the MLflow run are.
"""

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a checkpoint on a benchmark task, logged to MLflow")
    parser.add_argument("task", help="benchmark task, e.g. imagenet, flickr30k_retrieval")
    parser.add_argument("checkpoint", type=Path, help="model to evaluate (.safetensors or a released .pth)")
    parser.add_argument("--config", type=Path, required=True, help="the task's fine-tuning YAML (data, model size)")
    parser.set_defaults(func=run)


def print_result(result: dict) -> None:
    print(json.dumps(result["metrics"], sort_keys=True, default=str))
    print(f"{result['eval_split']} split; checkpoint: {result['checkpoint']}")
    print(f"submission: {result['submission']}")
    print(f"MLflow run {result['mlflow_run_id']} in {result['tracking_uri']}")
    print(f"  open it with: mlflow ui --backend-store-uri {result['tracking_uri']} --host 127.0.0.1 --port 5000")


def run(args: argparse.Namespace) -> int:
    from evaluation.finetune import evaluate_checkpoint

    print_result(evaluate_checkpoint(args.task, args.checkpoint, args.config))
    return 0
