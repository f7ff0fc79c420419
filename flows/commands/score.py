"""`beit3 score TASK --predictions FILE --annotations FILE [--questions FILE]`: official metrics of a prediction file.

Prints the metrics of `evaluation.score.score_files` as one JSON object on stdout (nothing else goes to stdout,
so the output can be piped into `jq` or stored as is); a malformed or mismatching file is reported on stderr
with exit code 2.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

# Kept in sync with evaluation.score.TASKS by a test; listed here so `beit3 --help` does not import evaluation.
TASK_CHOICES = ("vqav2", "coco_captioning", "nocaps", "nlvr2", "imagenet", "ade20k", "coco_detection")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `score` subcommand."""
    parser = subparsers.add_parser(
        "score",
        help="score a prediction file in an official benchmark format",
        description="Score predictions against official annotations; prints one JSON object.",
    )
    parser.add_argument("task", choices=TASK_CHOICES, help="benchmark whose file formats to read")
    parser.add_argument("--predictions", type=Path, required=True, help="prediction / submission file")
    parser.add_argument("--annotations", type=Path, required=True, help="official ground-truth file")
    parser.add_argument("--questions", type=Path, default=None, help="VQAv2 question file (optional)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scores the files named in `args` and prints the metrics; returns the exit code."""
    from evaluation.score import score_files

    try:
        # Metric libraries may print progress; stdout is reserved for the JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            metrics = score_files(args.task, args.predictions, args.annotations, args.questions)
    except ValueError as error:  # ScoreFileError, or --questions given for a task that has none
        print(f"beit3 score: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0
