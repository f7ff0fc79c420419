"""Images/s of `VQKD.encode` (BEiT v2 VQ-KD tokenizer, preprocessing.vqkd) for the named configs.

Random weights and random [0, 1] images: the cost of tokenization does not depend on the weights. The
encoder runs under autocast for bf16/fp16; the 32-d projection and the codebook lookup stay fp32, as in the
model. Excludes image decoding and resizing.

    python benchmarks/tokenizer_throughput.py                                   # CPU, fp32, both configs
    python benchmarks/tokenizer_throughput.py --device cuda --dtype bf16 --batch 256
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocessing.vqkd.model import build_vqkd  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, batch: int, device: torch.device, dtype: str, iters: int, warmup: int, **overrides) -> dict:
    """Median images/s of `encode` over `iters` timed calls after `warmup` untimed ones."""
    model = build_vqkd(name, **overrides).to(device).eval()
    images = torch.rand(batch, 3, model.config.img_size, model.config.img_size, device=device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=DTYPES[dtype]) if dtype != "fp32" else contextlib.nullcontext()
    )
    times = []
    with autocast:
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            model.encode(images)
            _sync(device)  # wait for the device before reading the clock
            if i >= warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "config": name,
        "batch": batch,
        "device": str(device),
        "dtype": dtype,
        "img_size": model.config.img_size,
        "num_codes": model.num_codes,
        "images_per_s": round(batch / seconds, 1),
        "ms_per_batch": round(1000 * seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["vqkd_tiny", "vqkd_base"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--num-codes", type=int, default=8192, help="codebook size for every config")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.configs:
        result = measure(
            name,
            args.batch,
            device,
            args.dtype,
            args.iters,
            args.warmup,
            num_codes=args.num_codes,
            img_size=args.img_size,
        )
        result["threads"] = torch.get_num_threads() if device.type == "cpu" else None
        print(json.dumps(result))


if __name__ == "__main__":
    main()
