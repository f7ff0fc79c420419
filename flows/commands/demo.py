"""`beit3 demo`: a short MDM pretraining run of the tiny model on generated data, in this process (no Ray).

The same pretraining kind and runtime loop as `beit3 pretrain`, on one rank: the smoke test of the whole
model and training stack.
"""

import argparse
from datetime import datetime
from pathlib import Path

KINDS = ("image", "text", "pair_image", "pair_text")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="short MDM pretraining of beit3_tiny on generated data, no Ray")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo-<timestamp>")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from beit3_core.checkpoint import export_released_checkpoint, load_checkpoint
    from beit3_core.runtime.checkpoint import MODEL_FILE
    from beit3_core.runtime.loop import run_local
    from beit3_core.train.config import build_config
    from beit3_core.train.launcher import resolve_model_config
    from beit3_core.train.loop import PretrainKind

    run_dir = (args.run_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    # Generated batches read in the training process, one rank, one checkpoint at the end.
    cfg = build_config(
        "tiny_cpu",
        {
            "data": {"shards": "synthetic", "num_workers": 0, "pack_texts": False}
            | {"images_per_step": 4, "texts_per_step": 4, "pairs_per_step": 4},
            "optim": {"lr": 1e-3, "warmup_steps": 10},
            "run": {"steps": args.steps, "seed": args.seed, "num_workers": 1, "log_every": 25}
            | {"checkpoint_every": args.steps},
        },
    )
    model_config, data_info = resolve_model_config(cfg)
    history: list[dict] = []
    start = time.perf_counter()
    loop_config = {"config": cfg.to_dict(), "model_config": model_config, "data_info": data_info}
    run_local(PretrainKind, loop_config, out_dir=run_dir, on_log=history.append)
    seconds = time.perf_counter() - start
    export_released_checkpoint(load_checkpoint(run_dir / MODEL_FILE), run_dir / "model_released_layout.pth")
    summary = {"config": cfg.to_dict(), "seconds": seconds, "history": history}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    first, last = history[0], history[-1]
    print(f"MDM loss {first['loss']:.3f} -> {last['loss']:.3f} in {seconds:.1f} s ({last['step']} steps)")
    for kind in KINDS:
        print(f"  masked-token accuracy {kind:<10} {first[f'accuracy/{kind}']:.2f} -> {last[f'accuracy/{kind}']:.2f}")
    print(f"run directory: {run_dir} (model.safetensors, model_released_layout.pth, metrics.json, training state)")
    return 0
