"""ImageNet-1k classification with the released linear head (`BEiT3ForImageClassification`).

BEiT-3 (arXiv 2208.10442); checked against microsoft/unilm `beit3/modeling_finetune.py`, `datasets.py`
(`ImageNetDataset`) and `get_started/get_started_for_image_classification.md`. The paper's giant number casts
classification as image-to-text retrieval; the release (and this task) uses a linear head.

Layout under `root`: `train/<class>/<file>` (ImageFolder); `val/<class>/<file>`, or flat `val/<file>` plus a
`val.txt` of "file_name class_index" lines. Classes = sorted sub-folder names of `train/` (label = position);
"test" reuses val, as the release does. Images are decoded by content (some ILSVRC ".JPEG" files are PNG/CMYK).

Training (timm's recipe, as released; `evaluation.tasks.augment`): RandomResizedCrop(0.08-1, bicubic) + flip,
RandAugment `randaug` (fill = the ImageNet mean), normalisation, random erasing with probability `reprob`
(per-pixel noise); the loss mixes the batch with Mixup (`mixup` alpha) / CutMix (`cutmix` alpha) and takes
the soft-target cross entropy of label-smoothed targets, or plain label-smoothed cross entropy when both are 0.
The eval transform is exact. Ops run through PIL rather than timm, so pixels may differ by rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.model import trunc_normal_one_sigma_
from evaluation.baselines import baseline_result, binomial_stderr, ranked_by_frequency
from evaluation.metrics.classification import ranked_accuracy
from evaluation.tasks.augment import (
    Mixup,
    RandomErasing,
    mixup_target,
    rand_augment,
    soft_target_cross_entropy,
    torch_rng,
)
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.data import check_split, load_rgb, random_resized_crop, write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Input normalisation: (mean, std). "imagenet" is the release's for ImageNet-1k; "inception" (mean = std = 0.5) is
# what its vision-language tasks and our pretraining use (beit3_core.data.views).
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": ((0.5,) * 3, (0.5,) * 3)}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
SPLIT_DIRS = {"train": "train", "val": "val", "test": "val"}
HEAD_INIT_SCALE = 1e-3
DEFAULT_CROP_SCALE = (0.08, 1.0)  # timm's RandomResizedCrop area range, which the release keeps

_COMMON = dict(img_size=224, epochs=50, warmup_epochs=5, batch_size=1024, weight_decay=0.05, label_smoothing=0.1)
_COMMON |= dict(mixup=0.8, cutmix=1.0, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, crop_pct=1.0, min_lr=1e-6)
RECIPES = {
    "base": _COMMON | dict(lr=7e-4, layer_decay=0.65, drop_path=0.15),
    "large": _COMMON | dict(lr=2e-4, layer_decay=0.8, drop_path=0.25),
}


class ImageClassificationModel(nn.Module):
    """Vision-only encoder (no final LN) -> mean of patch tokens -> `fc_norm` -> `head`."""

    def __init__(self, beit3: beit3_core.BEiT3, num_classes: int):
        super().__init__()
        dim = beit3.config.embed_dim
        self.beit3 = beit3
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_one_sigma_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            # The release shrinks the fresh head so early logits are near zero.
            self.head.weight.mul_(HEAD_INIT_SCALE)
            self.head.bias.mul_(HEAD_INIT_SCALE)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x_BND = self.beit3(image=image)
        pooled_BD = self.fc_norm(x_BND[:, 1:].mean(dim=1))  # CLS excluded
        return self.head(pooled_BD)  # [B, C]


def list_classes(root: str | Path) -> list[str]:
    """Sorted class folder names of `root/train`."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train} not found: classes are the sub-folders of train/")
    return sorted(p.name for p in train.iterdir() if p.is_dir())


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def index_split(root: str | Path, split: str) -> list[tuple[str, int]]:
    """(path relative to root, label) for every image of the split, in sorted order."""
    check_split(split, SPLIT_DIRS)
    root = Path(root)
    folder = root / SPLIT_DIRS[split]
    classes = list_classes(root)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if subdirs:
        label_of = {name: label for label, name in enumerate(classes)}
        unknown = [p.name for p in subdirs if p.name not in label_of]
        if unknown:
            raise ValueError(f"{folder}: class folders not in train/: {unknown[:5]}")
        return [
            (path.relative_to(root).as_posix(), label_of[sub.name])
            for sub in subdirs
            for path in sorted(sub.rglob("*"))
            if _is_image(path)
        ]
    labels_file = root / f"{SPLIT_DIRS[split]}.txt"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{folder} has no class folders and {labels_file} does not exist")
    items = []
    for line in labels_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, label = line.split()
            items.append(((Path(SPLIT_DIRS[split]) / name).as_posix(), int(label)))
    return items


class ImageNetDataset(Dataset):
    """ImageFolder-style split; the train split is augmented (`randaug`, `reprob`), the others never are.

    Args:
        randaug: A timm RandAugment string ("rand-m9-mstd0.5-inc1"); False, None or "" = off.
        reprob: Random-erasing probability; 0 = off.
        crop_scale: Area range of the training RandomResizedCrop (timm's `scale`; the release keeps timm's
            default (0.08, 1.0)).
        normalize: A `NORMALIZATIONS` key: "imagenet" (the release's) or "inception" (mean = std = 0.5, the
            pretraining's input).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        img_size: int,
        crop_pct: float = 1.0,
        randaug: str | bool | None = RECIPES["base"]["randaug"],
        reprob: float = RECIPES["base"]["reprob"],
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
        normalize: str = "imagenet",
    ):
        self.root, self.split, self.img_size, self.crop_pct = Path(root), split, img_size, crop_pct
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale}")
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {normalize!r}")
        mean, std = NORMALIZATIONS[normalize]
        self.mean_3, self.std_3 = torch.tensor(mean), torch.tensor(std)
        self.classes = list_classes(root)
        self.items = index_split(root, split)
        if randaug is True:
            raise ValueError("ImageNet randaug takes a timm RandAugment string such as 'rand-m9-mstd0.5-inc1'")
        if not 0 <= reprob <= 1:
            raise ValueError(f"reprob must lie in [0, 1], got {reprob}")
        train = split == "train"
        fill = tuple(min(255, round(255 * m)) for m in mean)  # timm's `img_mean`
        augment = rand_augment(randaug, fill) if randaug else None  # parsed for every split: bad strings fail
        self.randaug = augment if train else None
        self.erasing = RandomErasing(prob=reprob) if train and reprob > 0 else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel_path, label = self.items[index]
        image = load_rgb(self.root / rel_path)
        if self.split == "train":
            rendered = random_resized_crop(image, self.img_size, scale=self.crop_scale)
        else:
            rendered = _resize_center_crop(image, self.img_size, self.crop_pct)
        rng = torch_rng() if self.randaug is not None or self.erasing is not None else None
        if self.randaug is not None:
            rendered = np.asarray(self.randaug(Image.fromarray(rendered), rng))
        x = torch.from_numpy(rendered.copy()).permute(2, 0, 1).float() / 255  # [3, S, S]
        x = (x - self.mean_3[:, None, None]) / self.std_3[:, None, None]
        if self.erasing is not None:
            x = self.erasing(x, rng)
        return {"image": x, "label": label, "image_id": rel_path}


def _resize_center_crop(image: np.ndarray, size: int, crop_pct: float) -> np.ndarray:
    """Resize the short side to size / crop_pct (bicubic), then centre-crop size x size (timm eval)."""
    height, width = image.shape[:2]
    short = int(size / crop_pct)
    new_w, new_h = (
        (short, max(short, round(height * short / width)))
        if width <= height
        else (
            max(short, round(width * short / height)),
            short,
        )
    )
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


class ImageNetTask(Task):
    name = "imagenet"
    eval_split = "val"
    reads_text = False
    recipes = RECIPES
    selection_key = "acc1"
    dataset_augmentations = ("randaug", "reprob")
    loss_augmentations = ("mixup", "cutmix")

    def build_model(self, backbone_name: str, num_classes: int = 1000, **overrides: Any) -> ImageClassificationModel:
        backbone = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": False}))
        return ImageClassificationModel(backbone, num_classes)

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> ImageNetDataset:
        return ImageNetDataset(root, split, img_size, **options)

    def loss(
        self, model: nn.Module, batch: Batch, step: int = 0, mixup: float = 0.0, cutmix: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Label-smoothed cross entropy; with `mixup` or `cutmix` alpha > 0 (training), Mixup/CutMix soft targets."""
        smoothing = self.recipe()["label_smoothing"]
        if mixup > 0 or cutmix > 0:
            mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing)
            images, lam = mixer.mix(batch["image"])
            logits_BC = model(images)
            targets_BC = mixup_target(batch["label"], logits_BC.shape[1], lam, smoothing)
            loss = soft_target_cross_entropy(logits_BC, targets_BC)
        else:
            logits_BC = model(batch["image"])
            loss = F.cross_entropy(logits_BC, batch["label"], label_smoothing=smoothing)
        acc = (logits_BC.argmax(dim=-1) == batch["label"]).float().mean()
        return loss, {"loss": loss.detach(), "acc1": acc.detach()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        logits_BC = model(batch["image"])
        ranked_BK = logits_BC.topk(min(5, logits_BC.shape[1]), dim=-1).indices.tolist()
        return [{"image_id": i, "ranked": r} for i, r in zip(batch["image_id"], ranked_BK, strict=True)]

    def evaluate(self, records: Sequence[Record], dataset: ImageNetDataset) -> dict[str, Any]:
        ranked = {r["image_id"]: r["ranked"] for r in records}
        ks = (1, 5) if len(dataset.classes) >= 5 else (1,)
        return {**ranked_accuracy(ranked, dataset.labels, ks=ks), "num_images": len(ranked)}

    def baseline(self, train_set: ImageNetDataset, eval_set: ImageNetDataset) -> dict[str, Any]:
        """The larger of chance (k / K) and the training split's most frequent classes, best first."""
        num_classes = len(eval_set.classes)
        seen = ranked_by_frequency(train_set.labels.values())
        ranking = seen + [c for c in range(num_classes) if c not in seen]
        majority = self.evaluate([{"image_id": i, "ranked": ranking[:5]} for i in eval_set.labels], eval_set)
        metrics, n = {}, len(eval_set)
        for name in (m for m in majority if m.startswith("acc")):
            chance = 100.0 * min(int(name[3:]), num_classes) / num_classes
            metrics |= {name: max(majority[name], chance), f"majority_{name}": majority[name], f"chance_{name}": chance}
        predictor = f"majority class {eval_set.classes[ranking[0]]!r} of the training split"
        if metrics["chance_acc1"] > metrics["majority_acc1"]:
            predictor = f"chance (1 / {num_classes})"
        stderr = {m: binomial_stderr(metrics[m], n) for m in metrics if not m.startswith(("majority", "chance"))}
        return baseline_result(predictor, metrics | {"num_images": n}, stderr, "binomial", n)

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: Dataset) -> Path:
        # The JSON object that evaluation.score reads: image id -> class indices, best first.
        return write_json({r["image_id"]: r["ranked"] for r in records}, path)


register(ImageNetTask())
