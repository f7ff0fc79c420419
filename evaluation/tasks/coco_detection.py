"""COCO object detection and instance segmentation (units 3 and 4): one Mask R-CNN, two evaluations.

BEiT-3 (arXiv 2208.10442) released no detection code; the recipe is detectron2's ViTDet
(`projects/ViTDet/configs/COCO/mask_rcnn_vitdet_{b,l}_100ep.py`, `common/coco_loader_lsj.py`): Mask R-CNN on
the simple feature pyramid (`evaluation.dense.detection`) over a backbone with 14 x 14 window attention and a
few global blocks, large-scale jitter at 1024 px, AdamW with layer-wise LR decay. Scores come only from
pycocotools `COCOeval` (`evaluation.metrics.detection`).

Layout under `root` (COCO 2017): `annotations/instances_{train,val}2017.json` and `{train,val}2017/<file_name>`;
the "test" split reads val2017 (test-dev is scored by the server only). Category ids map to contiguous classes
in id order and back when results are written.

Training inputs (LSJ): resize by a factor drawn from `scale_range` times img_size / long side, random crop to
img_size x img_size (pad when smaller), horizontal flip; masks follow the same transform (nearest). Crowd
regions, boxes under 1 px and instances the crop empties are left out of the targets (counted); images
without any target are skipped (counted, logged). Evaluation inputs: long side resized to img_size, padded to
a square; boxes and masks are mapped back to the original image before scoring.

Difference from the reference: the fine-tuning loop's schedule is linear warmup + cosine, not ViTDet's
step decay at 88.9% and 96.3% of training (the recipe's `min_lr` is the step schedule's final 1e-6).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from evaluation.baselines import baseline_result
from evaluation.baselines.dense import DETECTION_ROUNDS, box_ap_stderr, majority_category, whole_image_prior
from evaluation.baselines.stats import bootstrap_method
from evaluation.dense.detection import DetectorConfig, MaskRCNN, paste_masks
from evaluation.metrics.detection import (
    CategoryMap,
    check_instances,
    check_results,
    decode_segmentation,
    detection_metrics,
    encode_mask,
    random_boxes_baseline,
)
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.data import check_split, load_rgb, read_json, write_json

logger = logging.getLogger(__name__)

SPLIT_DIRS = {"train": "train2017", "val": "val2017", "test": "val2017"}
PIXEL_MEAN = PIXEL_STD = 0.5  # BEiT-3's input normalisation, as in pretraining
SIZE_MULTIPLE = 64  # p6 (stride 64) must tile the padded input
RANDOM_BOXES_MAX_IMAGES = 1000
RANDOM_BOXES = "100 random boxes per image"
RANDOM_BOXES_ROUNDS = 20  # ~1 s of COCOeval per resample on the 200-scene miniature

_COMMON = dict(img_size=1024, epochs=100, batch_size=64, weight_decay=0.1, betas=(0.9, 0.999), min_lr=1e-6)
_COMMON |= dict(warmup_epochs=0.14)  # 250 of 184,375 iterations at batch 64 = 100 epochs
RECIPES = {
    "base": _COMMON | dict(lr=1e-4, layer_decay=0.7, drop_path=0.1),
    "large": _COMMON | dict(lr=1e-4, layer_decay=0.8, drop_path=0.4),
}


def annotation_file(root: str | Path, split: str) -> Path:
    check_split(split, SPLIT_DIRS)
    return Path(root) / "annotations" / f"instances_{SPLIT_DIRS[split]}.json"


class CocoInstancesDataset(Dataset):
    """A COCO instances split; items hold the padded image, its scale and (train) the targets.

    Args:
        scale_range: LSJ scale factors for the train split (ViTDet: 0.1-2.0).
    """

    def __init__(self, root: str | Path, split: str, img_size: int, scale_range: Sequence[float] = (0.1, 2.0)):
        if img_size % SIZE_MULTIPLE:
            raise ValueError(f"coco_detection needs img_size divisible by {SIZE_MULTIPLE}, got {img_size}")
        self.root, self.split, self.img_size, self.scale_range = Path(root), split, img_size, tuple(scale_range)
        self.train = split == "train"
        path = annotation_file(root, split)
        self.gt, self.counts = check_instances(read_json(path), str(path))
        self.categories = CategoryMap(self.gt["categories"])
        self.classes = [self.categories.names[cid] for cid in self.categories.coco_ids]
        self.annotations: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in self.gt["images"]}
        for ann in self.gt["annotations"]:
            self.annotations[ann["image_id"]].append(ann)
        images = sorted(self.gt["images"], key=lambda img: img["id"])
        if self.train:
            usable = [img for img in images if any(_is_target(a) for a in self.annotations[img["id"]])]
            self.counts["train_images_skipped_without_targets"] = len(images) - len(usable)
            self.counts["train_annotations_skipped"] = sum(
                not _is_target(a) for img in usable for a in self.annotations[img["id"]]
            )
            images = usable
            logger.info("%s: training targets from %d images; skipped: %s", path, len(images), self.counts)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        image = load_rgb(self.root / SPLIT_DIRS[self.split] / info["file_name"])
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(
                f"{info['file_name']}: image is {height}x{width}, annotation says "
                f"{info['height']}x{info['width']} (image id {info['id']})"
            )
        item = {"image_id": info["id"], "height": height, "width": width}
        if not self.train:
            scale = self.img_size / max(height, width)
            x = _to_tensor(_resize(image, scale))
            return item | {"image": _pad(x, self.img_size), "scale": scale}
        anns = [a for a in self.annotations[info["id"]] if _is_target(a)]
        masks = torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns]))
        classes = torch.tensor([self.categories.to_contiguous(a["category_id"]) for a in anns])
        return item | self._jitter(image, masks, classes)

    def _jitter(self, image: np.ndarray, masks: torch.Tensor, classes: torch.Tensor) -> dict[str, Any]:
        """Large-scale jitter + flip of the image and its masks; boxes are taken from the transformed masks."""
        size = self.img_size
        low, high = self.scale_range
        scale = float(torch.empty(()).uniform_(low, high)) * size / max(image.shape[:2])
        x = _to_tensor(_resize(image, scale))  # [3, h, w]
        h, w = x.shape[1:]
        m = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5  # [n, h, w]
        top = int(torch.randint(0, max(h - size, 0) + 1, ()))
        left = int(torch.randint(0, max(w - size, 0) + 1, ()))
        x, m = x[:, top : top + size, left : left + size], m[:, top : top + size, left : left + size]
        if bool(torch.rand(()) < 0.5):
            x, m = x.flip(-1), m.flip(-1)
        x, m = _pad(x, size), _pad(m, size)
        keep = m.flatten(1).any(dim=1)
        boxes = masks_to_boxes(m[keep])
        return {"image": x, "scale": scale, "boxes": boxes, "classes": classes[keep], "masks": m[keep]}


def _is_target(ann: Mapping[str, Any]) -> bool:
    """Training targets: not crowd, box at least 1 px wide and high (detectron2 drops the rest too)."""
    return not ann["iscrowd"] and ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1 and ann.get("segmentation")


def masks_to_boxes(masks_NHW: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes [N, 4] around non-empty masks (pixel edges: a 1-pixel mask at x is [x, x + 1])."""
    if len(masks_NHW) == 0:
        return torch.zeros(0, 4)
    rows, cols = masks_NHW.any(dim=2), masks_NHW.any(dim=1)  # [N, H], [N, W]
    ys = torch.arange(masks_NHW.shape[1])
    xs = torch.arange(masks_NHW.shape[2])
    y0 = torch.where(rows, ys, masks_NHW.shape[1]).min(dim=1).values
    y1 = torch.where(rows, ys, -1).max(dim=1).values + 1
    x0 = torch.where(cols, xs, masks_NHW.shape[2]).min(dim=1).values
    x1 = torch.where(cols, xs, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - PIXEL_MEAN) / PIXEL_STD  # [3, h, w]


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the bottom and right of [..., h, w] to size x size."""
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


class CocoDetectionTask(Task):
    name = "coco_detection"
    recipes = RECIPES
    selection_key = "bbox_AP"
    dataset_augmentations = ()
    reads_text = False

    def build_model(
        self, backbone_name: str, num_classes: int = 80, detector: dict | None = None, **overrides: Any
    ) -> MaskRCNN:
        """`detector`: `DetectorConfig` fields (`out_channels`, `rpn: {...}`, `roi_heads: {...}`)."""
        beit3 = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": False}))
        cfg = DetectorConfig.from_options({"num_classes": num_classes, **(detector or {})})
        return MaskRCNN(beit3, cfg)

    def dataset(
        self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any
    ) -> CocoInstancesDataset:
        return CocoInstancesDataset(root, split, img_size, **options)

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Batch:
        """Images stacked; per-image targets and sizes kept as lists."""
        batch: Batch = {"image": torch.stack([item["image"] for item in items])}
        for key in items[0]:
            if key != "image":
                batch[key] = [item[key] for item in items]
        return batch

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = batch["image"].device
        targets = [
            {"boxes": b.to(device), "classes": c.to(device), "masks": m.to(device)}
            for b, c, m in zip(batch["boxes"], batch["classes"], batch["masks"], strict=True)
        ]
        losses = model(batch["image"], targets)
        total = sum(losses.values())
        return total, {"loss": total.detach()} | {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        outputs = model(batch["image"])
        records = []
        for out, image_id, scale, height, width in zip(
            outputs, batch["image_id"], batch["scale"], batch["height"], batch["width"], strict=True
        ):
            boxes = out["boxes"].cpu() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            masks = paste_masks(out["mask_probs"].cpu(), boxes, height, width) > 0.5 if "mask_probs" in out else None
            records.append({"image_id": image_id, "detections": _detections(boxes, out, masks)})
        return records

    def evaluate(self, records: Sequence[Record], dataset: CocoInstancesDataset) -> dict[str, Any]:
        results = [d | {"image_id": r["image_id"]} for r in records for d in r["detections"]]
        results = [d | {"category_id": dataset.categories.to_coco(d.pop("class_index"))} for d in results]
        check_results(results, dataset.gt, f"{dataset.split} predictions")
        iou_types = ("bbox", "segm") if all("segmentation" in d for d in results) else ("bbox",)
        metrics = detection_metrics(dataset.gt, results, iou_types)
        return metrics | {"num_images": len(records), "annotation_counts": dict(dataset.counts)}

    def baseline(self, train_set: CocoInstancesDataset, eval_set: CocoInstancesDataset) -> dict[str, Any]:
        """The stronger (by box AP) of two input-blind predictors: one whole-image box (and mask) of the training
        split's most frequent category per test image, or 100 seeded random boxes per image labelled with the
        categories present. Random boxes are tried only on test sets of at most `RANDOM_BOXES_MAX_IMAGES`
        images: their bootstrap costs a COCOeval of 100 boxes per image per resample."""
        category = majority_category(train_set.gt)
        n = len(eval_set.gt["images"])
        name = eval_set.categories.names[category]
        whole_image = f"whole image as one {name!r} box per image"
        candidates = [(whole_image_prior(eval_set.gt, category), whole_image, DETECTION_ROUNDS)]
        if n <= RANDOM_BOXES_MAX_IMAGES:
            candidates.append((random_boxes_baseline(eval_set.gt), RANDOM_BOXES, RANDOM_BOXES_ROUNDS))
        scored = []
        for results, predictor, rounds in candidates:
            check_results(results, eval_set.gt, predictor)
            scored.append((detection_metrics(eval_set.gt, results), results, predictor, rounds))
        metrics, results, predictor, rounds = max(scored, key=lambda entry: entry[0]["bbox_AP"])
        stderr = {"bbox_AP": box_ap_stderr(eval_set.gt, results, rounds=rounds)}
        return baseline_result(predictor, metrics, stderr, bootstrap_method(rounds), n)

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: CocoInstancesDataset) -> Path:
        # The official result-file format: one entry per detection, original category ids, RLE counts as str.
        results = [
            {k: v for k, v in d.items() if k != "class_index"}
            | {"image_id": r["image_id"], "category_id": dataset.categories.to_coco(d["class_index"])}
            for r in records
            for d in r["detections"]
        ]
        return write_json(results, path)


def _detections(boxes: torch.Tensor, out: Mapping[str, torch.Tensor], masks: torch.Tensor | None) -> list[dict]:
    """One dict per detection with an xywh box, its score, class index and (with masks) compressed RLE."""
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    detections = []
    for i, (box, score, cls) in enumerate(zip(xywh, out["scores"].tolist(), out["classes"].tolist(), strict=True)):
        entry = {"bbox": [round(v, 2) for v in box], "score": round(score, 5), "class_index": cls}
        if masks is not None:
            entry["segmentation"] = encode_mask(masks[i].numpy())
        detections.append(entry)
    return detections


register(CocoDetectionTask())
