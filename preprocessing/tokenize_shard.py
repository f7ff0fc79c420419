"""Pass 2 of a shard: text ids, K replayable views per image with their visual tokens, and the final shard.

Views are drawn from a generator seeded by (seed, record key), so a rebuilt shard holds the same views; the
tokens of a view are computed on exactly the pixels the pretraining loader will render from the stored JPEG.
"""

import hashlib

import numpy as np
import pyarrow.parquet as pq
import torch

from beit3_core.data.views import (
    ViewParams,
    decode_stored_image,
    decode_stored_pil,
    render_view,
    render_views,
    sample_views,
    to_tokenizer_input,
)
from beit3_core.text_tokenizer import XLMRTokenizer
from preprocessing.config import ViewStage
from preprocessing.quarantine import QuarantineRecord


def _view_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")])


@torch.no_grad()
def tokenize_views(tokenizer, pixels: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Visual tokens of rendered views (uint8 [S, S, 3] each), row-major over the token grid."""
    tokens = []
    device = next(tokenizer.parameters()).device
    for start in range(0, len(pixels), batch_size):
        batch = to_tokenizer_input(np.stack(pixels[start : start + batch_size])).to(device)
        tokens += tokenizer.encode(batch).cpu().tolist()
    return tokens


def build_records(
    clean_table_path,
    duplicates: dict[str, str],
    source: str,
    text_tokenizer: XLMRTokenizer,
    max_tokens: int,
    visual_tokenizer,
    img_size: int,
    views: ViewStage,
    seed: int,
    batch_size: int,
) -> tuple[list[dict], list[QuarantineRecord]]:
    """Final shard records from a clean table; duplicates (key -> first key) go to quarantine."""
    rows = pq.read_table(clean_table_path).to_pylist()
    records, quarantine, pending = [], [], []
    for row in rows:
        if row["key"] in duplicates:
            quarantine.append(
                QuarantineRecord(source, row["key"], "duplicate", f"duplicate_of={duplicates[row['key']]}")
            )
            continue
        record = {
            "key": row["key"],
            "source": source,
            "kind": row["kind"],
            "label": row["label"],
            "provenance": row["provenance"],
            "input_file": row["input_file"],
            "caption": row["caption"],
            "text_ids": None,
            "image_sha256": None,
            "stored_height": None,
            "stored_width": None,
            "views": None,
        }
        if row["caption"] is not None:
            record["text_ids"] = text_tokenizer.encode(row["caption"], max_length=max_tokens)
        if row["image"] is not None:
            stored = decode_stored_pil(row["image"])  # the one decode of this record in this pass
            allow_flip = row["kind"] == "image" or views.flip_pairs
            params = sample_views(
                stored.height,
                stored.width,
                views.num_views,
                _view_rng(seed, row["key"]),
                scale=views.scale,
                allow_flip=allow_flip,
            )
            record |= {
                "image_bytes": row["image"],
                "image_sha256": hashlib.sha256(row["image"]).hexdigest(),
                "stored_height": stored.height,
                "stored_width": stored.width,
                "views": [vars(p) | {"tokens": None} for p in params],
            }
            pending += [(record, i, pixels) for i, pixels in enumerate(render_views(stored, params, img_size))]
        records.append(record)
    tokens = tokenize_views(visual_tokenizer, [p for _, _, p in pending], batch_size)
    for (record, i, _), view_tokens in zip(pending, tokens, strict=True):
        record["views"][i]["tokens"] = view_tokens
    return records, quarantine


def replay_view(image_bytes: bytes, view: dict, img_size: int) -> np.ndarray:
    """The pixels a stored view stands for (what the pretraining loader renders)."""
    params = ViewParams(view["top"], view["left"], view["height"], view["width"], bool(view["flip"]))
    return render_view(decode_stored_image(image_bytes), params, img_size)
