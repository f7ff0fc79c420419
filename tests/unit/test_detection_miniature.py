"""The miniature COCO instances set: real Tux Paint cut-outs on real backgrounds, written in the COCO 2017 layout."""

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.metrics.detection import check_instances, decode_segmentation
from evaluation.miniature_coco import build_coco_instances_miniature, mask_polygons, uncompressed_rle, write_instances
from evaluation.miniature_dense import TUXPAINT_STAMPS, compose_scenes, load_backgrounds, load_stamps

pytestmark = pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="needs tuxpaint-stamps-default")


def test_polygons_and_crowd_rle_rasterise_back_to_the_mask():
    mask = np.zeros((40, 50), dtype=bool)
    mask[0:12, 0:20] = True  # touches the border
    mask[20:35, 30:45] = True
    mask[25:30, 35:40] = False  # a hole: COCO polygons cannot hold it, the outline covers it
    polygons, short = mask_polygons(mask)
    assert short == 0 and len(polygons) >= 2
    filled = mask.copy()
    filled[25:30, 35:40] = True
    np.testing.assert_array_equal(decode_segmentation(polygons, 40, 50), filled)
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(mask), 40, 50), mask)
    assert uncompressed_rle(mask)["counts"][0] == 0  # starts with an empty run of zeros


def test_written_instances_match_the_scenes(tmp_path):
    stamps = load_stamps(TUXPAINT_STAMPS, ("animals", "food"))
    scenes = list(compose_scenes(12, stamps, load_backgrounds(), seed=3))
    data, counts = write_instances(scenes, tmp_path, "val", ("animals", "food"))
    checked, coco_counts = check_instances(data, "instances_val2017.json")
    assert coco_counts["images"] == 12 and coco_counts["crowd"] == counts["crowd"]
    assert [c["id"] for c in data["categories"]] == [1, 3]
    instances = [(number, inst) for number, scene in enumerate(scenes, 1) for inst in scene.instances]
    assert counts["skipped_without_polygon"] == 0 and len(checked["annotations"]) == len(instances)
    file_of = {image["id"]: image["file_name"] for image in data["images"]}
    for ann, (number, inst) in zip(checked["annotations"], instances, strict=True):
        mask = inst.mask
        # Ids 2 i + 1 (1 and 3): non-contiguous on purpose, as COCO's are, so id and index cannot be confused.
        assert ann["category_id"] == {"animals": 1, "food": 3}[inst.category]
        assert file_of[ann["image_id"]] == f"{number:012d}.jpg"  # the scene's own picture
        decoded = decode_segmentation(ann["segmentation"], *mask.shape)
        iou = (decoded & mask).sum() / (decoded | mask).sum()
        assert iou > 0.95 and ann["area"] == mask.sum()  # outlines fill the holes of a cut-out
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert (tmp_path / "val2017" / "000000000001.jpg").is_file()


def test_build_is_deterministic_and_reused(tmp_path):
    first = build_coco_instances_miniature(tmp_path / "a", num_train=4, num_val=2)
    again = build_coco_instances_miniature(tmp_path / "a", num_train=4, num_val=2)
    other = build_coco_instances_miniature(tmp_path / "b", num_train=4, num_val=2)
    assert first["built"] and not again["built"]
    for split in ("train2017", "val2017"):
        path = f"annotations/instances_{split}.json"
        a, b = (json.loads((r["root"] / path).read_text()) for r in (first, other))
        assert a == b and check_instances(a, path)[1]["images"] == (4 if split == "train2017" else 2)


def test_background_kind_changes_the_pixels_not_the_layout(tmp_path):
    textures = build_coco_instances_miniature(tmp_path / "t", num_train=3, num_val=2)
    photos = build_coco_instances_miniature(tmp_path / "p", num_train=3, num_val=2, backgrounds="photos")
    assert textures["counts"]["backgrounds"] == ["grass", "gravel", "brick"]
    assert "grace_hopper.jpg" in photos["counts"]["backgrounds"]
    path = "annotations/instances_val2017.json"
    assert json.loads((textures["root"] / path).read_text()) == json.loads((photos["root"] / path).read_text())
    name = "val2017/000000000001.jpg"
    assert (textures["root"] / name).read_bytes() != (photos["root"] / name).read_bytes()
    # A grey texture: away from the pasted objects, the three channels agree (up to JPEG chroma noise).
    gt = json.loads((textures["root"] / path).read_text())
    image = np.asarray(Image.open(textures["root"] / name).convert("RGB")).astype(int)
    covered = np.zeros(image.shape[:2], bool)
    for ann in gt["annotations"]:
        if ann["image_id"] == 1:
            x, y, w, h = (int(v) for v in ann["bbox"])
            covered[y : y + h + 1, x : x + w + 1] = True
    spread = image.max(axis=2) - image.min(axis=2)
    assert np.median(spread[~covered]) <= 6


def test_unknown_background_kind_is_refused():
    with pytest.raises(ValueError, match="unknown background kind 'sky'"):
        load_backgrounds("sky")
