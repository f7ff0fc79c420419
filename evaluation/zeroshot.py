"""Zero-shot image-text retrieval (units 11 and 12): Flickr30K 1k test and COCO 5k test, no task fine-tuning.

BEiT-3 (arXiv 2208.10442) evaluates the dual encoder of its ITC checkpoint (`beit3_*_itc_patch16_224.pth`: MDM
pretraining followed by image-text contrastive tuning on the pretraining pairs) directly on the Karpathy test
splits, at 224 px with the eval transform (resize straight to 224 x 224, bicubic). Nothing is trained: no
optimizer exists here, the model runs in eval mode under `torch.no_grad`.

Each test image is embedded once and each caption once, in batches; the scores are computed one chunk of rows
at a time from the features (`retrieval_recall_from_features`, the evaluator of the fine-tuned retrieval units),
so a 5,000 x 25,010 COCO evaluation never holds more than one chunk of scores.

A checkpoint without the ITC heads (`vision_head.weight`, `language_head.weight`, `logit_scale`), e.g. an MDM
checkpoint, defines no zero-shot retrieval: loading it is an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from beit3_core.checkpoint import load_released_state_dict, read_checkpoint_metadata, read_state_dict
from beit3_core.config import BEiT3Config, get_config
from beit3_core.itc import ITC_HEAD_KEYS, BEiT3ForITC
from beit3_core.runtime.progress import ProgressDisplay
from evaluation.metrics.retrieval import retrieval_recall_from_features
from evaluation.tasks.data import text_segment, vl_image
from evaluation.tasks.karpathy import KARPATHY_FILES, CaptionedImage, read_karpathy

ZEROSHOT_UNITS = {"flickr30k_zeroshot": "flickr30k", "coco_zeroshot": "coco"}
"""Unit name -> Karpathy data set."""
EVAL_IMG_SIZE = 224
SPLIT = "test"


@dataclass
class ZeroShotSplit:
    """The test split of one Karpathy file: images in file order, captions with the row of their image."""

    root: Path
    images: list[CaptionedImage]
    captions: list[str]
    text_to_image: list[int]


def read_zeroshot_split(unit: str, root: str | Path) -> ZeroShotSplit:
    """The unit's test split; an error names the file when it holds no test image."""
    if unit not in ZEROSHOT_UNITS:
        raise ValueError(f"unknown zero-shot unit {unit!r}; known: {sorted(ZEROSHOT_UNITS)}")
    benchmark = ZEROSHOT_UNITS[unit]
    images = read_karpathy(root, benchmark, SPLIT)
    if not images:
        raise ValueError(
            f"{Path(root) / KARPATHY_FILES[benchmark]} has no image in the Karpathy test split (split: test)"
        )
    captions, text_to_image = [], []
    for row, image in enumerate(images):
        if not image.captions:
            raise ValueError(f"{image.image_path}: test image without captions in {KARPATHY_FILES[benchmark]}")
        captions += image.captions
        text_to_image += [row] * len(image.captions)
    return ZeroShotSplit(Path(root), images, captions, text_to_image)


def load_dual_encoder(
    checkpoint: str | Path, name: str = "beit3_base_patch16_224", img_size: int = EVAL_IMG_SIZE, **overrides: Any
) -> BEiT3ForITC:
    """The dual encoder of an ITC checkpoint (ours or released), backbone and heads loaded strictly.

    With one of our safetensors files the shape comes from its header; with a released `.pth`, from `name`.
    Vision positions are resized when `img_size` differs from the checkpoint's.
    """
    path = Path(checkpoint)
    state = read_state_dict(path)
    missing = [key for key in ITC_HEAD_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{path} holds no ITC projection heads (missing {', '.join(missing)}): zero-shot retrieval is undefined"
            " for it; tune it with `beit3 itc` first"
        )
    if path.suffix == ".safetensors":
        fields = json.loads(read_checkpoint_metadata(path)["config"])
        config = BEiT3Config(**fields).replace(img_size=img_size, **overrides)
    else:
        config = get_config(name, img_size=img_size, **overrides)
    model = BEiT3ForITC(config.replace(normalize_output=True, drop_path_rate=0.0))
    load_released_state_dict(model, state, str(path)).log(path)
    return model.eval()


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def embed_split(
    model: BEiT3ForITC,
    split: ZeroShotSplit,
    tokenizer: Any,
    batch_size: int = 64,
    text_len: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features [I, D], caption features [T, D]) on the CPU, each image and caption embedded once."""
    model.to(device).eval()
    img_size = model.config.img_size
    images, texts = [], []
    # Progress counts images and captions embedded (samples/s over both).
    total = len(split.images) + len(split.captions)
    with ProgressDisplay(f"zero-shot embed {split.root.name}", total) as progress:
        start, done = time.monotonic(), 0
        for chunk in _batches(split.images, batch_size):
            pixels = torch.stack([vl_image(split.root / image.image_path, img_size, train=False) for image in chunk])
            images.append(model.encode_image(pixels.to(device)).float().cpu())
            done += len(chunk)
            progress.update(done, rate=done / max(time.monotonic() - start, 1e-9))
        for chunk in _batches(list(range(len(split.captions))), batch_size):
            ids, padding = zip(*(_caption_segment(tokenizer, split, index, text_len) for index in chunk), strict=True)
            texts.append(model.encode_text(torch.stack(ids).to(device), torch.stack(padding).to(device)).float().cpu())
            done += len(chunk)
            progress.update(done, rate=done / max(time.monotonic() - start, 1e-9))
    return torch.cat(images), torch.cat(texts)


def _caption_segment(tokenizer: Any, split: ZeroShotSplit, index: int, text_len: int):
    ids, padding = text_segment(tokenizer, split.captions[index], text_len)
    if int((~padding).sum()) <= 2:  # only <s> and </s>
        image = split.images[split.text_to_image[index]].image_path
        raise ValueError(f"caption {split.captions[index]!r} of {image} tokenises to nothing (only <s> </s>)")
    return ids, padding


def evaluate_zeroshot(
    unit: str,
    checkpoint: str | Path,
    root: str | Path,
    tokenizer: Any,
    name: str = "beit3_base_patch16_224",
    img_size: int = EVAL_IMG_SIZE,
    batch_size: int = 64,
    chunk_size: int = 1024,
    text_len: int = 64,
    device: torch.device | str = "cpu",
    overrides: dict | None = None,
    model_hook: Callable[[BEiT3ForITC], None] | None = None,
) -> dict[str, Any]:
    """TR/IR R@1/5/10 (percent), their mean `average_score`, and the split's size, of an ITC checkpoint.

    `model_hook` sees the loaded model before evaluation (tests check it is never trained).
    """
    split = read_zeroshot_split(unit, root)
    model = load_dual_encoder(checkpoint, name, img_size, **(overrides or {}))
    if model_hook is not None:
        model_hook(model)
    image_ID, text_TD = embed_split(model, split, tokenizer, batch_size, text_len, device)
    text_to_image = torch.tensor(split.text_to_image)
    metrics = retrieval_recall_from_features(image_ID, text_TD, text_to_image, chunk_size=chunk_size)
    return metrics | {"num_images": len(split.images), "num_texts": len(split.captions), "img_size": img_size}
