"""The ADE20K scene-parsing split reader (`ADEChallengeData2016` layout) with checked label files.

Layout under `root` (the SceneParsing 2016 release):

    images/{training,validation}/ADE_{train,val}_%08d.jpg
    annotations/{training,validation}/<same stem>.png     single-channel uint8: 0 = "other", 1..150 = classes
    objectInfo150.txt                                      optional: tab-separated, header row, class name last

Images pair with labels by stem; there is no index file (mmseg `ADE20KDataset`). Labels are read with
reduce_zero_label (0 -> 255 ignored, k -> k - 1). The class count is the number of rows of objectInfo150.txt
(150 for ADE20K; a miniature benchmark ships its own), or 150 without the file. A label PNG whose size differs
from its image, that is not single-channel, or that holds values outside 0..num_classes other than 255, or an
image without its label, raises `ValueError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evaluation.dense.segmentation.transforms import (
    CAT_MAX_RATIO,
    CROP_SIZE,
    IGNORE_INDEX,
    IMG_SCALE,
    RATIO_RANGE,
    normalize,
    reduce_zero_label,
    train_pipeline,
)
from evaluation.tasks.data import check_split, load_rgb

SPLIT_DIRS = {"train": "training", "val": "validation", "test": "validation"}
NUM_CLASSES = 150
CLASS_FILE = "objectInfo150.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_class_names(root: str | Path) -> list[str]:
    """Class names in label order from objectInfo150.txt (first name of the last column), or 150 numbers."""
    path = Path(root) / CLASS_FILE
    if not path.is_file():
        return [str(i) for i in range(1, NUM_CLASSES + 1)]
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no class rows after the header")
    return [row[-1].split(";")[0].strip() for row in rows]


def read_label(path: str | Path, image_size: tuple[int, int], num_classes: int) -> np.ndarray:
    """Raw label [H, W] uint8 checked against its image's (width, height) and the class range."""
    path = Path(path)
    with Image.open(path) as png:
        if png.mode not in ("L", "P"):
            raise ValueError(f"{path}: label PNG must be single-channel (mode L or P), got mode {png.mode}")
        if png.size != image_size:
            raise ValueError(
                f"{path}: label is {png.size[0]}x{png.size[1]} but its image is {image_size[0]}x{image_size[1]}"
            )
        label = np.array(png, dtype=np.uint8)
    bad = np.unique(label[(label > num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"{path}: label values {bad[:10].tolist()} outside 0..{num_classes} (255 = ignore)")
    return label


class ADE20KDataset(Dataset):
    """One split. Train items: a random crop through the reference pipeline; other splits: the whole image.

    Train item: "image" [3, S, S] float, "label" [S, S] int64 (255 = ignored), "image_id" (the stem).
    Eval item: "image" [3, h0, w0] float at the original size (the model test-resizes it), "image_id", and
    "test" (the sliding-window options). Ground truth of eval splits: `label(image_id)`, reduced.

    Args:
        crop_size, img_scale, ratio_range, cat_max_ratio, photometric: the training pipeline (reference
            defaults 512, (2048, 512), (0.5, 2.0), 0.75, on).
        slide_crop, slide_stride: sliding-window inference (512, 341); `ms_ratios` and `flip` the
            multi-scale test (default single scale, no flip).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        crop_size: int = CROP_SIZE,
        img_scale: tuple[int, int] = IMG_SCALE,
        ratio_range: tuple[float, float] = RATIO_RANGE,
        cat_max_ratio: float = CAT_MAX_RATIO,
        photometric: bool = True,
        slide_crop: int = CROP_SIZE,
        slide_stride: int = 341,
        ms_ratios: tuple[float, ...] = (1.0,),
        flip: bool = False,
    ):
        check_split(split, SPLIT_DIRS)
        self.root, self.split = Path(root), split
        self.classes = read_class_names(root)
        self.train_options = dict(
            img_scale=tuple(img_scale),
            ratio_range=tuple(ratio_range),
            crop_size=crop_size,
            cat_max_ratio=cat_max_ratio,
            photometric=photometric,
        )
        self.test_options = dict(
            img_scale=tuple(img_scale), crop=slide_crop, stride=slide_stride, ratios=tuple(ms_ratios), flip=flip
        )
        self.items = index_split(self.root, split)
        self._by_id = {stem: i for i, (stem, _, _) in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def image_and_label(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB [H, W, 3] and the reduced label [H, W] of item `index`, checked."""
        _, image_path, label_path = self.items[index]
        image = load_rgb(image_path)
        raw = read_label(label_path, (image.shape[1], image.shape[0]), len(self.classes))
        return image, reduce_zero_label(raw)

    def label(self, image_id: str) -> np.ndarray:
        return self.image_and_label(self._by_id[image_id])[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        stem = self.items[index][0]
        image, label = self.image_and_label(index)
        if self.split == "train":
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            image_3SS, label_SS = train_pipeline(image, label, rng, **self.train_options)
            return {
                "image": torch.from_numpy(image_3SS),
                "label": torch.from_numpy(label_SS.astype(np.int64)),
                "image_id": stem,
            }
        return {"image": torch.from_numpy(normalize(image)), "image_id": stem, "test": self.test_options}


def index_split(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(stem, image path, label path) of every image of the split, sorted by stem."""
    folder = root / "images" / SPLIT_DIRS[split]
    labels = root / "annotations" / SPLIT_DIRS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (expected the ADEChallengeData2016 layout)")
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = labels / f"{path.stem}.png"
        if not label.is_file():
            raise ValueError(f"{path}: no label file {label}")
        items.append((path.stem, path, label))
    if not items:
        raise ValueError(f"{folder}: no images")
    return items
