"""`beit3 demo`: a short MDM pretraining run of the tiny model on generated data."""

import argparse
from datetime import datetime
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="short MDM pretraining of beit3_tiny on generated data")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo-<timestamp>")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beit3_core.demo_pretrain import DemoPretrainConfig, run_demo_pretraining

    run_dir = args.run_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    summary = run_demo_pretraining(DemoPretrainConfig(steps=args.steps, seed=args.seed), run_dir)
    first, last = summary["history"][0], summary["history"][-1]
    print(f"MDM loss {first['loss']:.3f} -> {last['loss']:.3f} in {summary['seconds']:.1f} s ({last['step']} steps)")
    for kind in ("image", "text", "pair_image", "pair_text"):
        print(f"  masked-token accuracy {kind:<10} {first[f'accuracy/{kind}']:.2f} -> {last[f'accuracy/{kind}']:.2f}")
    print(f"run directory: {run_dir.resolve()} (model.safetensors, model_released_layout.pth, metrics.json)")
    return 0
