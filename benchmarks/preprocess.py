"""Preprocessing throughput per core: each stage of the full path against plain PIL decode + resize.

Single process, one torch thread (= one core; Ray runs one such process per core). Stages per image:
decode + validate (`validate_image`), resize + re-encode the stored JPEG, K view renders, visual tokenization
(`--tokenizer`, default an untrained vqkd_tiny: speed does not depend on the weights), shard writing. The
ceiling is PIL decode + resize to the stored short side on the same files.

    python benchmarks/preprocess.py --images data/demo/fashion_mnist --limit 300
"""

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beit3_core.data.views import (  # noqa: E402
    decode_stored_image,
    encode_stored_image,
    render_view,
    resize_short_side,
    sample_views,
    to_tokenizer_input,
)
from preprocessing.shard_writer import write_shard  # noqa: E402
from preprocessing.validate_image import validate_image  # noqa: E402
from preprocessing.vqkd.checkpoint import load_vqkd  # noqa: E402
from preprocessing.vqkd.model import build_vqkd  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _files(root: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"no images under {root}")
    return [p.read_bytes() for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a folder of image files")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--tokenizer", type=Path, default=None, help="a vqkd .safetensors (default: vqkd_tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = _files(args.images, args.limit)
    n = len(data)
    timings = {}

    start = time.perf_counter()
    for raw in data:
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        w, h = image.size
        scale = args.short_side / min(w, h)
        image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    ceiling = time.perf_counter() - start

    start = time.perf_counter()
    validated = [validate_image(raw) for raw in data]
    timings["decode_validate"] = time.perf_counter() - start
    accepted = [np.asarray(r.image) for r in validated if r.accepted]

    start = time.perf_counter()
    stored = [encode_stored_image(resize_short_side(a, args.short_side)) for a in accepted]
    timings["resize_encode"] = time.perf_counter() - start

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    renders, params = [], []
    for blob in stored:
        pixels = decode_stored_image(blob)
        views = sample_views(*pixels.shape[:2], args.views, rng)
        params.append(views)
        renders += [render_view(pixels, v, args.img_size) for v in views]
    timings["views"] = time.perf_counter() - start

    tokenizer = load_vqkd(args.tokenizer) if args.tokenizer else build_vqkd("vqkd_tiny", img_size=args.img_size)
    tokenizer = tokenizer.to(args.device).eval()
    start = time.perf_counter()
    tokens = []
    with torch.no_grad():
        for i in range(0, len(renders), args.batch):
            batch = to_tokenizer_input(np.stack(renders[i : i + args.batch])).to(args.device)
            tokens += tokenizer.encode(batch).cpu().tolist()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    timings["tokenize"] = time.perf_counter() - start

    records = []
    for i, (blob, views) in enumerate(zip(stored, params, strict=True)):
        height, width = decode_stored_image(blob).shape[:2]
        view_dicts = [vars(v) | {"tokens": tokens[i * args.views + j]} for j, v in enumerate(views)]
        records.append(
            {
                "key": f"bench/{i}",
                "source": "bench",
                "kind": "image",
                "label": None,
                "provenance": "bench",
                "input_file": "bench",
                "caption": None,
                "text_ids": None,
                "image_bytes": blob,
                "image_sha256": hashlib.sha256(blob).hexdigest(),
                "stored_height": height,
                "stored_width": width,
                "views": view_dicts,
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_shard(records, tmp, "bench", fingerprint="bench")
        timings["shard"] = time.perf_counter() - start

    total = sum(timings.values())
    result = {
        "images": n,
        "views_per_image": args.views,
        "device": args.device,
        "ceiling_images_per_s": n / ceiling,
        "full_path_images_per_s": n / total,
        "ratio_to_ceiling": ceiling / total,
        "stage_images_per_s": {stage: n / seconds for stage, seconds in timings.items()},
        "full_path_without_tokenizer_ratio": ceiling / (total - timings["tokenize"]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
