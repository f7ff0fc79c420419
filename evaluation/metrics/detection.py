"""COCO box and mask AP through pycocotools `COCOeval` (the official tool), with checked inputs.

Ground truth is a COCO `instances_*.json` object (spec benchmarks.md section 5); results are the official
result-file entries {"image_id", "category_id", "bbox": [x, y, w, h], "score"} for `bbox` and with
"segmentation" (compressed RLE, `counts` a UTF-8 string) for `segm`, category ids as in the ground truth. One
list may carry both fields (detectron2's `coco_instances_results.json`): the bbox evaluation reads the boxes,
the segm evaluation the masks. Every number comes from `COCOeval.evaluate/accumulate/summarize`; this module
only checks the inputs and names the 12 stats.

Input rules (nothing is dropped silently):
- an annotation naming an unknown image or category, a malformed box, or a polygon mask whose parts all have
  fewer than 3 points is an error naming the file and the annotation;
- a polygon part with fewer than 3 points beside valid parts is dropped and counted (`short_polygons`):
  pycocotools would read a 4-number part as a box;
- boxes with width or height < 1 are kept, as the official tool keeps them, and counted (`degenerate_boxes`);
- images without annotations are kept (their detections are false positives) and counted;
- a result naming an unknown image or category, or lacking a field, is an error naming the file and entry.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""`COCOeval.stats` in order: AP at IoU .50:.95 / .50 / .75, AP small / medium / large, AR at 1 / 10 / 100
detections, AR small / medium / large."""


def check_instances(data: Any, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A checked copy of a COCO instances object and its counts.

    Args:
        data: The parsed `instances_*.json`.
        source: The file name used in error messages.

    Returns:
        (ground truth with short polygon parts removed, counts: `images`, `annotations`, `crowd`,
        `images_without_annotations`, `degenerate_boxes`, `short_polygons`).

    Raises:
        ValueError: Naming `source` and the record, for the errors listed in the module docstring.
    """
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{source}: expected a JSON object with 'images', 'annotations' and 'categories' lists")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise ValueError(f"{source}: no 'categories' list")
    image_ids = {_field(source, "image", i, img, "id") for i, img in enumerate(data["images"])}
    category_ids = {_field(source, "category", i, cat, "id") for i, cat in enumerate(data["categories"])}
    counts = dict.fromkeys(("degenerate_boxes", "short_polygons", "crowd"), 0)
    annotations, annotated = [], set()
    for index, ann in enumerate(data["annotations"]):
        ann = _check_annotation(source, index, ann, image_ids, category_ids, counts)
        annotated.add(ann["image_id"])
        annotations.append(ann)
    checked = dict(data, annotations=annotations)
    counts |= {
        "images": len(image_ids),
        "annotations": len(annotations),
        "images_without_annotations": len(image_ids - annotated),
    }
    return checked, counts


def _field(source: str, what: str, index: int, record: Any, key: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{source}: {what} {index} lacks {key!r}")
    return record[key]


def _check_annotation(
    source: str, index: int, ann: Any, image_ids: set, category_ids: set, counts: dict[str, int]
) -> dict[str, Any]:
    name = f"annotation {index} (id {ann.get('id')!r})" if isinstance(ann, dict) else f"annotation {index}"
    for key in ("id", "image_id", "category_id", "bbox", "area", "iscrowd"):
        _field(source, "annotation", index, ann, key)
    if ann["image_id"] not in image_ids:
        raise ValueError(f"{source}: {name}: unknown image_id {ann['image_id']!r}")
    if ann["category_id"] not in category_ids:
        raise ValueError(f"{source}: {name}: unknown category_id {ann['category_id']!r}")
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise ValueError(f"{source}: {name}: bbox must be [x, y, w, h] numbers, got {box!r}")
    if box[2] < 1 or box[3] < 1:
        counts["degenerate_boxes"] += 1
    counts["crowd"] += int(bool(ann["iscrowd"]))
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        parts = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        counts["short_polygons"] += len(segmentation) - len(parts)
        if not parts:
            raise ValueError(f"{source}: {name}: no polygon with at least 3 points (x, y pairs) in its segmentation")
        if len(parts) != len(segmentation):
            ann = dict(ann, segmentation=parts)
    elif isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"{source}: {name}: RLE segmentation needs 'counts' and 'size'")
    elif segmentation is not None:
        raise ValueError(f"{source}: {name}: segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    return ann


def check_results(results: Any, gt: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The result entries, checked against the ground truth's image and category ids."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a JSON list of result objects")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    for index, entry in enumerate(results):
        for key in ("image_id", "category_id", "score"):
            _field(source, "result", index, entry, key)
        if "bbox" not in entry and "segmentation" not in entry:
            raise ValueError(f"{source}: result {index} has neither 'bbox' nor 'segmentation'")
        if entry["image_id"] not in image_ids:
            raise ValueError(f"{source}: result {index}: unknown image_id {entry['image_id']!r}")
        if entry["category_id"] not in category_ids:
            raise ValueError(f"{source}: result {index}: unknown category_id {entry['category_id']!r}")
        if "bbox" in entry and not (isinstance(entry["bbox"], list) and len(entry["bbox"]) == 4):
            raise ValueError(f"{source}: result {index}: bbox must be [x, y, w, h]")
    return results


def coco_stats(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str) -> list[float]:
    """The 12 `COCOeval.stats` of `results` (entries with the field `iou_type` needs) on checked ground truth."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown iou_type {iou_type!r}; expected one of {IOU_TYPES}")
    field, other = ("bbox", "segmentation") if iou_type == "bbox" else ("segmentation", "bbox")
    # loadRes picks its branch from the fields of the first entry: keep only the one evaluated.
    entries = [{k: v for k, v in r.items() if k != other} for r in results if field in r]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(entries)) if entries else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _empty_results(coco_gt: COCO) -> COCO:
    """A result set without detections (`loadRes` cannot read an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"]}
    coco_dt.dataset["annotations"] = []
    coco_dt.createIndex()
    return coco_dt


def detection_metrics(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_types: Sequence[str] = IOU_TYPES
) -> dict[str, Any]:
    """`<iou type>_<stat>` in percent (COCO stats x 100, -100 where COCOeval has no ground truth) plus counts.

    `gt` must have passed `check_instances` and `results` `check_results`.
    """
    metrics: dict[str, Any] = {}
    for iou_type in iou_types:
        stats = coco_stats(gt, results, iou_type)
        metrics |= {f"{iou_type}_{name}": 100 * value for name, value in zip(STAT_NAMES, stats, strict=True)}
    metrics["num_detections"] = len(results)
    return metrics


def encode_mask(mask_HW: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a binary mask with `counts` as a UTF-8 string (the result-file form)."""
    rle = mask_utils.encode(np.asfortranarray(mask_HW.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A polygon list, uncompressed or compressed RLE -> bool [H, W] mask (pycocotools' rasterisation)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class CategoryMap:
    """COCO category ids (non-contiguous, e.g. 1..90) <-> contiguous class indices 0..K-1 in id order."""

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        self.coco_ids = sorted(int(c["id"]) for c in categories)
        self.names = {int(c["id"]): c.get("name", str(c["id"])) for c in categories}
        self._index = {cid: i for i, cid in enumerate(self.coco_ids)}

    def __len__(self) -> int:
        return len(self.coco_ids)

    def to_contiguous(self, coco_id: int) -> int:
        return self._index[int(coco_id)]

    def to_coco(self, index: int) -> int:
        return self.coco_ids[int(index)]


def full_image_baseline(gt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trivial predictor the detector is compared with: for every image, one detection per category that
    has a (non-crowd) object in it, whose box and mask are the whole image (score 1). It knows which categories
    are present, which a detector must find out, and nothing about where they are."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    present = sorted({(a["image_id"], a["category_id"]) for a in gt["annotations"] if not a["iscrowd"]})
    results = []
    for image_id, category_id in present:
        height, width = sizes[image_id]
        mask = np.ones((height, width), dtype=bool)
        box = [0.0, 0.0, float(width), float(height)]
        results.append({"image_id": image_id, "category_id": category_id, "bbox": box, "score": 1.0})
        results[-1]["segmentation"] = encode_mask(mask)
    return results


def random_boxes_baseline(gt: Mapping[str, Any], per_image: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """A second trivial predictor: per image `per_image` uniformly random boxes (side 8 px to the image size)
    labelled with random categories among those present, random scores, masks = the boxes."""
    rng = np.random.default_rng(seed)
    present: dict[int, list[int]] = {}
    for a in gt["annotations"]:
        if not a["iscrowd"] and a["category_id"] not in present.setdefault(a["image_id"], []):
            present[a["image_id"]].append(a["category_id"])
    results = []
    for img in sorted(gt["images"], key=lambda i: i["id"]):
        categories = sorted(present.get(img["id"], []))
        height, width = img["height"], img["width"]
        for _ in range(per_image if categories else 0):
            w, h = rng.uniform(8, width), rng.uniform(8, height)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            mask = np.zeros((height, width), dtype=bool)
            mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
            category = categories[int(rng.integers(len(categories)))]
            entry = {"image_id": img["id"], "category_id": category, "bbox": [x, y, w, h], "score": float(rng.random())}
            results.append(entry | {"segmentation": encode_mask(mask)})
    return results
