"""Time one Mask R-CNN training step (forward, losses, backward, AdamW) and split it into backbone and heads.

The same batch runs through (a) the whole step and (b) the backbone and pyramid alone (forward + backward of
the pyramid maps + AdamW), in one process, so the heads' share = 1 - (b) / (a) is robust to machine noise. FLOPs are
counted once for (a) and once for (b) by torch's FlopCounterMode (matmuls and convs of forward + backward), so
the heads' time share can be read against their FLOP share. Prints one JSON object.

    python benchmarks/detection_step.py --model beit3_tiny --img-size 128 --batch 4 --heads demo   # CPU
    python benchmarks/detection_step.py --model beit3_base_patch16_224 --img-size 1024 --batch 2 --heads vitdet \
        --device cuda --dtype bf16                                                                    # GPU
    ... --heads vitdet --window-size 0      # ViTDet's heads on a backbone with global attention in every block
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.tasks import get_task  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune_demo_coco_detection.yaml"


def synthetic_batch(batch: int, size: int, num_objects: int, device: torch.device) -> dict:
    """Random images and random box-shaped instances (timing only)."""
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        xy = torch.rand(num_objects, 2, generator=generator) * size * 0.6
        wh = torch.rand(num_objects, 2, generator=generator) * size * 0.35 + size * 0.05
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(num_objects, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        classes = torch.randint(0, 6, (num_objects,), generator=generator)
        targets.append({"boxes": boxes.to(device), "classes": classes.to(device), "masks": masks.to(device)})
    return {"image": torch.randn(batch, 3, size, size, generator=generator).to(device), "targets": targets}


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="beit3_tiny")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--objects", type=int, default=3, help="instances per image")
    parser.add_argument("--heads", choices=("demo", "vitdet"), default="demo", help="demo config or ViTDet sizes")
    parser.add_argument(
        "--window-size", type=int, help="backbone window attention (0 = global); default: the heads' config's"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backbone-only", action="store_true", help="time the backbone + pyramid step only (large inputs on CPU)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()

    device = torch.device(args.device)
    detector = yaml.safe_load(DEMO_CONFIG.read_text())["model"]["head_options"]["detector"]
    torch.manual_seed(0)
    task = get_task("coco_detection")
    detector = detector if args.heads == "demo" else {}
    if args.window_size is not None:
        detector = detector | {"window_size": args.window_size}
    model = task.build_model(args.model, num_classes=6, detector=detector, img_size=args.img_size).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(args.batch, args.img_size, args.objects, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()

    def full_step():
        with autocast:
            loss = sum(model(batch["image"], batch["targets"]).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def backbone_step():
        with autocast:
            loss = sum(level.float().mean() for level in model.features(batch["image"]).values())
        loss.backward()
        optimizer.step()  # AdamW skips the heads: their gradients are None
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as backbone_counter:
        with autocast:
            sum(level.float().mean() for level in model.features(batch["image"]).values()).backward()
    optimizer.zero_grad(set_to_none=True)
    backbone_flops = backbone_counter.get_total_flops()
    setup = {
        "model": args.model,
        "img_size": args.img_size,
        "batch": args.batch,
        "window_size": model.dense.window_size,
        "global_blocks": list(model.global_blocks),
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
    }
    if args.backbone_only:
        backbone_s = timed(backbone_step, args.repeats, device)
        print(
            json.dumps(
                setup
                | {
                    "backbone_and_pyramid_s": round(backbone_s, 4),
                    "backbone_tflop_per_step": round(backbone_flops / 1e12, 4),
                    "backbone_tflop_per_s": round(backbone_flops / backbone_s / 1e12, 4),
                }
            )
        )
        return
    with FlopCounterMode(display=False) as counter:
        with autocast:
            sum(model(batch["image"], batch["targets"]).values()).backward()
    optimizer.zero_grad(set_to_none=True)
    step_s = timed(full_step, args.repeats, device)
    backbone_s = timed(backbone_step, args.repeats, device)
    flops = counter.get_total_flops()
    print(
        json.dumps(
            setup
            | {
                "heads": args.heads,
                "images_per_s": round(args.batch / step_s, 3),
                "step_s": round(step_s, 4),
                "backbone_and_pyramid_s": round(backbone_s, 4),
                "heads_share": round(1 - backbone_s / step_s, 3),
                "tflop_per_step": round(flops / 1e12, 4),
                # The heads' share of the FLOPs: a time share near it means the heads cost their arithmetic,
                # not per-box Python or memory traffic.
                "heads_flop_share": round(1 - backbone_flops / flops, 3),
                "tflop_per_s": round(flops / step_s / 1e12, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
