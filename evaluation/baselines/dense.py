"""Trivial baselines of the dense units: the majority class everywhere (ADE20K) and one whole-image box of the
most frequent training class per image (COCO detection), each with a seeded bootstrap over test images.

Both scores come from the official scorers: mIoU from one dataset-level confusion matrix
(`evaluation.metrics.segmentation`), box AP from pycocotools' COCOeval (`evaluation.metrics.detection`). A
resample of test images sums their confusion matrices (segmentation) or re-indexes the drawn images and their
annotations as distinct images (detection), so COCOeval sees a test set of that composition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.baselines.stats import bootstrap_stderr
from evaluation.metrics.detection import coco_stats, encode_mask
from evaluation.metrics.segmentation import IGNORE_INDEX, segmentation_metrics

DETECTION_ROUNDS = 50
"""COCOeval takes a while per resample; 50 resamples give the standard error to about 10%."""


def majority_pixel_class(labels: Iterable[np.ndarray], num_classes: int) -> int:
    """The class of most labelled pixels over the label maps (ignored pixels left out; ties: the smallest)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        valid = label[label != IGNORE_INDEX].astype(np.int64)
        counts += np.bincount(valid, minlength=num_classes)[:num_classes]
    if not counts.any():
        raise ValueError("no labelled training pixels to count")
    return int(np.argmax(counts))


def miou_stderr(confusions: Sequence[np.ndarray]) -> float:
    """Bootstrap standard error of mIoU over test images, from each image's confusion matrix."""
    return bootstrap_stderr(list(confusions), lambda drawn: segmentation_metrics(np.sum(drawn, axis=0))["mIoU"])


def majority_category(gt: Mapping[str, Any]) -> int:
    """The category id with the most non-crowd annotations (ties: the smallest id)."""
    counts: dict[int, int] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd"):
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    if not counts:
        raise ValueError("no training annotations to count")
    return min(counts, key=lambda c: (-counts[c], c))


def whole_image_prior(gt: Mapping[str, Any], category_id: int) -> list[dict[str, Any]]:
    """One detection per image: the whole image as box and mask, `category_id`, score 1 (official result format)."""
    results = []
    for img in sorted(gt["images"], key=lambda i: i["id"]):
        height, width = img["height"], img["width"]
        box = [0.0, 0.0, float(width), float(height)]
        mask = encode_mask(np.ones((height, width), dtype=bool))
        results.append(
            {"image_id": img["id"], "category_id": category_id, "bbox": box, "score": 1.0, "segmentation": mask}
        )
    return results


def box_ap_stderr(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], rounds: int = DETECTION_ROUNDS) -> float:
    """Bootstrap standard error of box AP (percent) over test images."""
    annotations: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        annotations[ann["image_id"]].append(ann)
    detections: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for entry in results:
        detections[entry["image_id"]].append(entry)
    images = list(gt["images"])

    def score(drawn: list[dict]) -> float:
        sample = {"images": [], "annotations": [], "categories": gt["categories"]}
        entries = []
        for new_id, img in enumerate(drawn, start=1):
            sample["images"].append(dict(img) | {"id": new_id})
            for ann in annotations[img["id"]]:
                sample["annotations"].append(dict(ann) | {"image_id": new_id, "id": len(sample["annotations"]) + 1})
            entries += [dict(d) | {"image_id": new_id} for d in detections[img["id"]]]
        return 100.0 * coco_stats(sample, entries, "bbox")[0]

    return bootstrap_stderr(images, score, rounds=rounds)
