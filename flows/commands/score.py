"""`beit3 score TASK --predictions FILE --annotations FILE [options]`: official metrics of a prediction file.

Prints the metrics of `evaluation.score.score_files` as one JSON object on stdout (nothing else goes to stdout,
so the output can be piped into `jq` or stored as is); a malformed or mismatching file is reported on stderr
with exit code 2. `--help` lists the input format of every task (`evaluation.score_formats`, which imports
nothing heavy, so `beit3 --help` stays fast).
"""

import argparse
import contextlib
import json
import sys
import textwrap
from pathlib import Path

from evaluation.score_formats import FORMATS, TASKS

TASK_CHOICES = TASKS


def _formats_epilog() -> str:
    blocks = [textwrap.fill(f"{task}: {text}", width=100, subsequent_indent="  ") for task, text in FORMATS.items()]
    return "input formats:\n" + "\n".join(blocks)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `score` subcommand."""
    parser = subparsers.add_parser(
        "score",
        help="score a prediction file in an official benchmark format",
        description="Score predictions against official annotations; prints one JSON object.",
        epilog=_formats_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=TASK_CHOICES, help="benchmark whose file formats to read")
    parser.add_argument("--predictions", type=Path, required=True, help="prediction / submission / score file")
    parser.add_argument("--annotations", type=Path, required=True, help="official ground-truth file")
    parser.add_argument("--questions", type=Path, default=None, help="vqav2: question file (optional)")
    parser.add_argument(
        "--vqa-eval-revision",
        choices=("2021", "2017"),
        default=None,
        help="vqav2: revision of the official vqaEval.py to follow (default 2021, the current one)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="imagenet: number of classes (default 1000)")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), default=None, help="retrieval: Karpathy split (default test)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scores the files named in `args` and prints the metrics; returns the exit code."""
    from evaluation.score import score_files

    options = {"vqa_eval_revision": args.vqa_eval_revision, "num_classes": args.num_classes, "split": args.split}
    try:
        # Metric libraries may print progress; stdout is reserved for the JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            metrics = score_files(args.task, args.predictions, args.annotations, args.questions, **options)
    except ValueError as error:  # ScoreFileError, or an option given for a task that does not read it
        print(f"beit3 score: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0
