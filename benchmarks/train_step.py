"""Time one MDM training step (forward, loss, backward, AdamW) of our BEiT-3 against torchscale's BEiT3.

Both models get the same MDM heads, loss and optimizer on the same generated batches, in the same process,
timed in alternating rounds. Prints samples/s (median round) and achieved TFLOP/s per stream kind, the min /
median / max seconds per step over the rounds, the machine load while measuring, and the speed ratio only when
the spread over rounds is narrower than the effect (`benchmarks.timing.speed_ratio`).

    python benchmarks/train_step.py --model beit3_base_patch16_224 --batch 64 --dtype bf16 --device cuda
    python benchmarks/train_step.py --model beit3_tiny --batch 16            # CPU, fp32
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import beit3_core  # noqa: E402
from beit3_core.config import BEiT3Config  # noqa: E402
from beit3_core.mdm import BEiT3ForMDM, MDMBatch  # noqa: E402
from beit3_core.optim import build_adamw  # noqa: E402
from beit3_core.synthetic import SyntheticMDMData  # noqa: E402
from beit3_core.train.metrics import step_flops  # noqa: E402
from benchmarks.timing import LoadMeter, speed_ratio, spread, time_rounds  # noqa: E402

KIND_SIZES = {"image": (1, 0, 0), "text": (0, 1, 0), "pair": (0, 0, 1)}


class TorchscaleBackbone(nn.Module):
    """torchscale's BEiT3 behind our forward signature, so it can carry the same MDM heads and loss."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        from benchmarks.torchscale_reference import build_torchscale_beit3

        self.model = build_torchscale_beit3(config)
        self.num_patches = config.num_patches

    def forward(self, image=None, text=None, text_padding_mask=None, image_mask=None, attn_mask=None):
        from benchmarks.torchscale_reference import torchscale_forward

        return torchscale_forward(self.model, image, text, text_padding_mask, image_mask, attn_mask)


def make_step(model: nn.Module, batch: MDMBatch, dtype: str, device: torch.device):
    """One training step as a closure; the optimizer is part of the step."""
    optimizer = build_adamw(model, lr=1e-4)
    bf16 = dtype == "bf16"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_bf16_peak(device: torch.device, size: int = 8192, iters: int = 20) -> float:
    """TFLOP/s of a large bf16 matmul: the practical peak that MFU figures are measured against."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12


def _summary(kind: str, row: dict) -> str:
    """One line per kind: rates, per-round spread, load, and the ratio or the refusal to give one."""
    parts = []
    for name in ("ours", "torchscale"):
        if name in row:
            r, t = row[name], row[name]["seconds_per_step"]
            parts.append(
                f"{name} {r['samples_per_s']:.2f} samples/s {r['tflops']:.3f} TFLOP/s "
                f"(s/step min {t['min']:.3f} median {t['median']:.3f} max {t['max']:.3f})"
            )
    load = row["load"]
    parts.append(
        f"load {load['load_1min_before']:.1f}->{load['load_1min_after']:.1f} on {load['num_cpus']} cpus, "
        f"cpu {load['cpu_percent']:.0f}%"
    )
    if "speedup" in row:
        parts.append(f"ours/torchscale {row['speedup']['text']}")
    if load["busy"]:
        parts.append("BUSY MACHINE (load above the core count): not a hardware figure")
    return f"{kind:>5}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="beit3_base_patch16_224", choices=beit3_core.list_models())
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kinds", nargs="+", default=list(KIND_SIZES), choices=list(KIND_SIZES))
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (min / median / max)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="skip torchscale")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    config = beit3_core.get_config(args.model, grad_checkpointing=args.grad_checkpointing)
    data = SyntheticMDMData(config, text_len=args.text_len, seed=0)
    results = {
        "model": args.model,
        "batch": args.batch,
        "text_len": args.text_len,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "compile": args.compile,
        "kinds": {},
    }
    if device.type == "cuda" and args.dtype == "bf16":
        results["bf16_peak_tflops"] = measure_bf16_peak(device)

    torch.manual_seed(0)
    ours = BEiT3ForMDM(config).to(device)
    runner = torch.compile(ours) if args.compile else ours
    reference = None
    if not args.no_reference:
        reference = BEiT3ForMDM(config)
        reference.beit3 = TorchscaleBackbone(config)
        reference = reference.to(device)

    for kind in args.kinds:
        batch = data.batch(*(args.batch * n for n in KIND_SIZES[kind])).to(device)
        flops = step_flops(config, batch)
        models = {"ours": runner} | ({"torchscale": reference} if reference is not None else {})
        steps = {name: make_step(model, batch, args.dtype, device) for name, model in models.items()}
        with LoadMeter() as load:
            samples = time_rounds(steps, args.steps, args.warmup, args.rounds, lambda: _sync(device))
        row = {"load": load.report()}
        for name, times in samples.items():
            seconds = spread(times)["median"]
            row[name] = {"samples_per_s": args.batch / seconds, "tflops": flops / seconds / 1e12}
            row[name]["seconds_per_step"] = spread(times) | {"rounds": times}
            if "bf16_peak_tflops" in results:
                row[name]["fraction_of_peak"] = row[name]["tflops"] / results["bf16_peak_tflops"]
        if "torchscale" in samples:
            row["speedup"] = speed_ratio(samples["ours"], samples["torchscale"])
        results["kinds"][kind] = row
        print(_summary(kind, row), flush=True)

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
