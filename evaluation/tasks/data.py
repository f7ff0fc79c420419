"""Inputs shared by the task datasets: image transforms, text segments and JSON readers.

Follows microsoft/unilm `beit3/datasets.py` (`build_transform`, `_get_text_segment`) for the vision-language
tasks: train = RandomResizedCrop(S, scale 0.5-1, ratio 3/4-4/3, bicubic) + horizontal flip; eval = resize
straight to S x S (aspect not kept, bicubic); both normalised with mean = std = 0.5. Tasks whose recipe sets
`randaug` add the release's RandomAugment(2, 7) after the flip (`evaluation.tasks.augment.vl_random_augment`,
PIL ops instead of the release's OpenCV ones). Text = `<s>` + pieces truncated to max_len - 2 + `</s>`,
right-padded with `<pad>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from beit3_core.data.views import render_view, sample_views, to_model_input
from evaluation.tasks.augment import RandAugment

PAD_ID = 1
VL_CROP_SCALE = (0.5, 1.0)


class TextTokenizer(Protocol):
    """What the tasks need from a tokenizer (`beit3_core.text_tokenizer.XLMRTokenizer` provides it)."""

    bos_id: int
    eos_id: int
    pad_id: int
    mask_id: int
    vocab_size: int

    def encode(self, text: str, max_length: int | None = None) -> list[int]: ...

    def decode(self, ids: Any, skip_special: bool = True) -> str: ...


def load_rgb(path: str | Path) -> np.ndarray:
    """Decodes an image by content (so a ".png" holding JPEG bytes works) to uint8 [H, W, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize straight to size x size: the release's eval transform for vision-language tasks."""
    # np.array copies: Pillow's buffer is read-only and torch warns on non-writable arrays.
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def random_resized_crop(
    image: np.ndarray, size: int, scale: tuple[float, float] = VL_CROP_SCALE, flip: bool = True
) -> np.ndarray:
    """RandomResizedCrop + horizontal flip (p = 0.5) drawn from torch's generator.

    The numpy generator is seeded from torch so DataLoader workers (which seed torch per worker) and
    `torch.manual_seed` control the draw.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    view = sample_views(image.shape[0], image.shape[1], 1, rng, scale=scale, allow_flip=flip, canonical_first=False)
    return np.array(render_view(image, view[0], size))  # writable copy, see `resize_square`


def vl_image(path: str | Path, size: int, train: bool, randaug: RandAugment | None = None) -> torch.Tensor:
    """Image file -> [3, S, S] float in [-1, 1] with the vision-language train or eval transform.

    `randaug` (train only) runs on the cropped, flipped image, as in the release's `build_transform`.
    """
    image = load_rgb(path)
    rendered = random_resized_crop(image, size) if train else resize_square(image, size)
    if train and randaug is not None:
        rendered = np.array(randaug(Image.fromarray(rendered)), dtype=np.uint8)
    return to_model_input(rendered)[0]


def text_segment(tokenizer: TextTokenizer, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`<s> pieces </s>` padded to `max_len`: int64 ids [T] and bool padding mask [T] (True = pad)."""
    ids = tokenizer.encode(text, max_length=max_len)
    ids_T = torch.full((max_len,), PAD_ID, dtype=torch.long)
    ids_T[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    padding_T = torch.arange(max_len) >= len(ids)
    return ids_T, padding_T


def read_json(path: str | Path) -> Any:
    with Path(path).open(encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Objects of a JSON Lines file (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def check_split(split: str, known: tuple[str, ...] | dict[str, Any]) -> None:
    if split not in known:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(known)}")
