"""End-to-end pretraining throughput (loader + step) against the model-only step on the same batches.

The loader is the pretraining loader with its default settings (`DataSection`): shards are streamed, views
replayed from the stored JPEGs, masks drawn, in DataLoader worker processes. The model-only figure runs the
same batches from memory. Both are measured in one process, one after the other, so the ratio is robust to
machine noise.

    python benchmarks/pretrain_throughput.py --shards runs/demo/shards --model beit3_tiny
    python benchmarks/pretrain_throughput.py --shards /data/shards --model beit3_base_patch16_224 --device cuda
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beit3_core.config import BEiT3Config  # noqa: E402
from beit3_core.mdm import BEiT3ForMDM  # noqa: E402
from beit3_core.optim import build_adamw  # noqa: E402
from beit3_core.train.config import build_config  # noqa: E402
from beit3_core.train.launcher import resolve_model_config  # noqa: E402
from beit3_core.train.streams import build_step_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--recipe", default="tiny_cpu")
    parser.add_argument("--model", default=None, help="model name (default: the recipe's)")
    parser.add_argument("--per-kind", type=int, default=None, help="samples per stream kind per step")
    parser.add_argument("--loader-workers", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    overrides = {"data": {"shards": str(Path(args.shards).resolve())}, "model": {}}
    if args.model:
        overrides["model"]["name"] = args.model
    if args.per_kind:
        overrides["data"] |= {k: args.per_kind for k in ("images_per_step", "texts_per_step", "pairs_per_step")}
    if args.loader_workers is not None:
        overrides["data"]["num_workers"] = args.loader_workers
    cfg = build_config(args.recipe, overrides)
    model_config, data_info = resolve_model_config(cfg)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BEiT3ForMDM(BEiT3Config(**model_config)).to(device).train()
    optimizer = build_adamw(model, lr=1e-4)
    bf16 = device.type == "cuda"

    def step(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    total = args.warmup + args.steps
    loader = build_step_batches(cfg, model_config, data_info, rank=0, world_size=1, start_step=0)
    batches = []
    for i in range(total):  # end to end: the loader produces each batch while the model trains
        if i == args.warmup:
            sync()
            start = time.perf_counter()
        batch = next(loader)
        batches.append(batch)
        step(batch.to(device, non_blocking=True))
    sync()
    end_to_end = args.steps / (time.perf_counter() - start)

    resident = [b.to(device) for b in batches]
    for batch in resident[: args.warmup]:
        step(batch)
    sync()
    start = time.perf_counter()
    for batch in resident[args.warmup :]:
        step(batch)
    sync()
    model_only = args.steps / (time.perf_counter() - start)

    samples = sum(batches[0].num_samples().values())
    result = {
        "model": cfg.model.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "samples_per_step": samples,
        "loader_workers": cfg.data.num_workers,
        "end_to_end_samples_per_s": end_to_end * samples,
        "model_only_samples_per_s": model_only * samples,
        "ratio": end_to_end / model_only,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
