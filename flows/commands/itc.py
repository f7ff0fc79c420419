"""`beit3 itc CONFIG`: image-text contrastive tuning of the dual encoder on the shards' pairs, on Ray Train.

The config names an ITC recipe (`recipe: itc_tiny_cpu`, `model.objective: itc`) and the MDM checkpoint to start
from (`model.init_checkpoint`, or `--init`). The run goes through the pretraining driver; its output exports in
the released ITC layout (`beit3.*`, `vision_head.weight`, `language_head.weight`, `logit_scale`).
"""

import argparse
from pathlib import Path

from flows.overrides import add_override_argument, parse_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("itc", help="image-text contrastive tuning from an MDM checkpoint (Ray Train)")
    parser.add_argument("config", type=Path, help="YAML: `recipe: itc_tiny_cpu` plus section overrides")
    parser.add_argument("--init", metavar="CHECKPOINT", help="MDM checkpoint to start from (model.init_checkpoint)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="continue this earlier run from its last checkpoint")
    add_override_argument(parser, "run.steps=50")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beit3_core.train.config import load_config
    from beit3_core.train.launcher import run_pretraining
    from flows.commands.pretrain import print_result

    overrides = parse_overrides(args.overrides)
    if args.init:
        overrides.setdefault("model", {})["init_checkpoint"] = args.init
    cfg = load_config(args.config, overrides)
    if cfg.model.objective != "itc":
        raise SystemExit(f"beit3 itc: {args.config} is not an ITC config (model.objective is {cfg.model.objective!r})")
    print_result(cfg, run_pretraining(cfg, resume=args.resume))
    return 0
