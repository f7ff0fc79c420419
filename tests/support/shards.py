"""A small preprocessed dataset written with the real shard writer, for pretraining tests.

Images are stripes of palette colours; the "visual tokens" of a view are the palette index nearest to each
rendered patch's mean colour, so they are a deterministic function of the replayed view and learnable from
the unmasked patches. Texts are arithmetic runs of ids; pair captions list the image's stripe colours.
"""

import hashlib
from pathlib import Path

import numpy as np

from beit3_core.data.views import (
    decode_stored_image,
    encode_stored_image,
    render_view,
    resize_short_side,
    sample_views,
)
from preprocessing.manifest import dataset_version, shard_entry
from preprocessing.shard_writer import write_manifest, write_shard

NUM_COLORS = 8
VOCAB_SIZE = 120  # tokenizer vocabulary (spm pieces + 2); <mask> is the last id
MASK_ID = VOCAB_SIZE - 1


def _patch_tokens(rendered: np.ndarray, patch: int, palette: np.ndarray) -> list[int]:
    grid = rendered.shape[0] // patch
    means = rendered.reshape(grid, patch, grid, patch, 3).mean(axis=(1, 3)).reshape(-1, 3)  # [g*g, 3]
    return np.argmin(((means[:, None, :] - palette[None]) ** 2).sum(-1), axis=1).tolist()


def build_test_shards(
    out_dir: Path,
    num_shards: int = 3,
    per_kind: int = 24,
    img_size: int = 32,
    patch: int = 16,
    num_views: int = 2,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(NUM_COLORS, 3)).astype(np.float64)
    entries = []
    for shard in range(num_shards):
        records = []
        for kind in ("image", "text", "pair"):
            for i in range(per_kind):
                key = f"fixture/{kind}-{shard}-{i:04d}"
                record = {
                    "key": key,
                    "source": "fixture",
                    "kind": kind,
                    "label": None,
                    "provenance": f"row {i}",
                    "input_file": f"part-{shard}.jsonl",
                    "caption": None,
                    "text_ids": None,
                    "image_sha256": None,
                    "stored_height": None,
                    "stored_width": None,
                    "views": None,
                }
                colors = rng.integers(0, NUM_COLORS, size=4)
                if kind in ("image", "pair"):
                    stripes = np.repeat(palette[colors], 64 // 4, axis=0)  # [64, 3] rows
                    image = np.broadcast_to(stripes[:, None, :], (64, 96, 3)).astype(np.uint8)
                    data = encode_stored_image(resize_short_side(image, 64))
                    stored = decode_stored_image(data)
                    views = []
                    for view in sample_views(*stored.shape[:2], num_views, rng, allow_flip=kind == "image"):
                        tokens = _patch_tokens(render_view(stored, view, img_size).astype(np.float64), patch, palette)
                        views.append(
                            {
                                "top": view.top,
                                "left": view.left,
                                "height": view.height,
                                "width": view.width,
                                "flip": view.flip,
                                "tokens": tokens,
                            }
                        )
                    record |= {
                        "image_bytes": data,
                        "image_sha256": hashlib.sha256(data).hexdigest(),
                        "stored_height": stored.shape[0],
                        "stored_width": stored.shape[1],
                        "views": views,
                    }
                if kind == "text":
                    start, length = int(rng.integers(4, 40)), int(rng.integers(6, 14))
                    record |= {"caption": "run", "text_ids": [0, *range(start, start + length), 2]}
                if kind == "pair":
                    record |= {"caption": "stripes", "text_ids": [0, *(10 + colors).tolist(), 2]}
                records.append(record)
        info = write_shard(records, out_dir, f"fixture-{shard:03d}", fingerprint=f"fixture-{seed}-{shard}")
        entries.append(shard_entry(info))
    manifest = {
        "shards": entries,
        "text_tokenizer": {"model_id": "fixture", "vocab_size": VOCAB_SIZE, "mask_id": MASK_ID},
        "visual_tokenizer": {
            "tokenizer_id": "fixture-palette",
            "num_codes": NUM_COLORS,
            "grid_size": img_size // patch,
            "img_size": img_size,
        },
    }
    manifest["dataset_version"] = dataset_version(manifest)
    write_manifest(out_dir, manifest)
    return out_dir
