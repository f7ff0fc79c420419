"""Readers of the caption files shared by captioning and retrieval: Karpathy splits and NoCaps.

Formats (Karpathy & Fei-Fei 2015 `caption_datasets.zip`; NoCaps, Agrawal et al. 2019): `dataset_coco.json` /
`dataset_flickr30k.json` = {"dataset", "images": [{"filepath" (COCO only), "filename", "imgid", "cocoid" (COCO
only), "split" ("train" | "restval" | "val" | "test"), "sentids", "sentences": [{"raw", "tokens", "imgid",
"sentid"}]}]}; `nocaps_val_4500_captions.json` = COCO caption format whose images carry "domain" and
"open_images_id". As in microsoft/unilm `beit3/datasets.py`, the Karpathy "train" split is train + restval,
COCO image paths are "<filepath>/<filename>" with the COCO id as image id, and Flickr30K images live in
`flickr30k-images/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluation.tasks.data import read_json

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
NOCAPS_FILES = {"val": "nocaps_val_4500_captions.json", "test": "nocaps_test_image_info.json"}


@dataclass
class CaptionedImage:
    image_path: str
    """Path relative to the data root."""
    image_id: int
    """COCO id for COCO, `imgid` for Flickr30K, `id` for NoCaps."""
    captions: list[str] = field(default_factory=list)
    domain: str | None = None
    """NoCaps domain ("in-domain" | "near-domain" | "out-domain")."""


def read_karpathy(root: str | Path, dataset: str, split: str) -> list[CaptionedImage]:
    """Images of a Karpathy split in file order, with their raw captions."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; expected one of {sorted(KARPATHY_SPLITS)}")
    if dataset not in KARPATHY_FILES:
        raise ValueError(f"unknown Karpathy dataset {dataset!r}; expected one of {sorted(KARPATHY_FILES)}")
    data = read_json(Path(root) / KARPATHY_FILES[dataset])
    images = []
    for entry in data["images"]:
        if entry["split"] not in KARPATHY_SPLITS[split]:
            continue
        if dataset == "coco":
            path, image_id = f"{entry['filepath']}/{entry['filename']}", entry["cocoid"]
        else:
            path, image_id = f"flickr30k-images/{entry['filename']}", entry["imgid"]
        images.append(CaptionedImage(path, image_id, [s["raw"] for s in entry["sentences"]]))
    return images


def read_nocaps(root: str | Path, split: str) -> list[CaptionedImage]:
    """NoCaps images (`<split>/<file_name>`) with their reference captions (none for test) and domains."""
    if split not in NOCAPS_FILES:
        raise ValueError(f"unknown NoCaps split {split!r}; expected one of {sorted(NOCAPS_FILES)}")
    data = read_json(Path(root) / NOCAPS_FILES[split])
    by_id = {
        image["id"]: CaptionedImage(f"{split}/{image['file_name']}", image["id"], domain=image.get("domain"))
        for image in data["images"]
    }
    for ann in data.get("annotations", []):
        by_id[ann["image_id"]].captions.append(ann["caption"])
    return list(by_id.values())


def coco_caption_ground_truth(images: list[CaptionedImage]) -> dict:
    """COCO caption format {"images", "annotations"} (what `evaluation.score` and pycocotools read)."""
    annotations = [
        {"image_id": image.image_id, "caption": caption, "id": index}
        for index, (image, caption) in enumerate((i, c) for i in images for c in i.captions)
    ]
    return {"images": [{"id": image.image_id} for image in images], "annotations": annotations}
