"""Pass 2 of a shard: text ids, K replayable views per image with their visual tokens, and the final records.

Views are drawn from a generator seeded by (seed, record key), so a rebuilt shard holds the same views; the
tokens of a view are computed on exactly the pixels the pretraining loader will render from the stored JPEG.
The CPU half (`render_records`) and the tokenizer half (`encode_views`, `attach_tokens`) are separate so that
`preprocessing.token_stage` can run them in different Ray workers; `build_records` joins them in one process.

Identity of the views: the stored JPEG is lossy, so its decoded pixels differ from the array it was encoded
from, and the loader renders from the decoded bytes. The views are therefore rendered from one decode of the
stored bytes (libjpeg-turbo, the cheapest exact way to get those pixels; no array-level shortcut reproduces
its IDCT and colour conversion), never from the pre-JPEG array.
"""

import hashlib

import numpy as np
import pyarrow.parquet as pq

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


def encode_views(tokenizer, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Visual tokens int64 [V, grid*grid] (row-major over the token grid) of rendered views uint8 [V, S, S, 3]."""
    import torch  # here, not at the top: the render and write workers import this module and never need it

    device = next(tokenizer.parameters()).device
    tokens = [np.empty((0, tokenizer.config.grid_size**2), dtype=np.int64)]
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            # uint8 crosses to the device (a quarter of the float bytes) and is scaled there.
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])).to(device)
            tokens.append(tokenizer.encode(to_tokenizer_input(batch)).cpu().numpy())
    return np.concatenate(tokens)


def render_records(
    clean_table_path,
    duplicates: dict[str, str],
    source: str,
    text_tokenizer: XLMRTokenizer,
    max_tokens: int,
    img_size: int,
    views: ViewStage,
    seed: int,
) -> tuple[list[dict], list[QuarantineRecord], np.ndarray]:
    """The CPU half of pass 2: shard records without visual tokens, duplicates (key -> first key) as quarantine,
    and the rendered views uint8 [V, img_size, img_size, 3] in record order (K per image record).

    Each stored image is decoded once and all its views are rendered from that decode: the pixels the
    pretraining loader will render from the same bytes.
    """
    rows = pq.read_table(clean_table_path).to_pylist()
    records, quarantine, rendered = [], [], []
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
            rendered.append(render_views(stored, params, img_size))
        records.append(record)
    pixels = np.concatenate(rendered) if rendered else np.empty((0, img_size, img_size, 3), dtype=np.uint8)
    return records, quarantine, pixels


def attach_tokens(records: list[dict], tokens: np.ndarray) -> None:
    """Fill the views of `records` (in order) with `tokens` [V, grid*grid] from `encode_views`."""
    rows = tokens.tolist()
    expected = sum(len(r["views"]) for r in records if r["views"])
    if len(rows) != expected:
        raise ValueError(f"{len(rows)} token rows for {expected} views")
    position = 0
    for record in records:
        for view in record["views"] or []:
            view["tokens"] = rows[position]
            position += 1


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
    """Final shard records of a clean table in one process (render, tokenize, attach), without Ray."""
    records, quarantine, pixels = render_records(
        clean_table_path, duplicates, source, text_tokenizer, max_tokens, img_size, views, seed
    )
    attach_tokens(records, encode_views(visual_tokenizer, pixels, batch_size))
    return records, quarantine


def replay_view(image_bytes: bytes, view: dict, img_size: int) -> np.ndarray:
    """The pixels a stored view stands for (what the pretraining loader renders)."""
    params = ViewParams(view["top"], view["left"], view["height"], view["width"], bool(view["flip"]))
    return render_view(decode_stored_image(image_bytes), params, img_size)
