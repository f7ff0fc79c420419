"""COCO bbox/segm metrics through pycocotools on the spec's fixture (benchmarks.md section 5f), plus bad input.

Fixture: two 320x240 images (ids 139, 285), categories person (1) and dog (18); one object per image and
category (so AR@1 can reach 1): image 139 holds an 80x80 person and a 95x95 dog, image 285 a 30x30 person
(small) and a 120x120 dog (large); a dog crowd region (uncompressed RLE) in image 139. Predictions: the exact
boxes/masks (score 0.9), a low-score person false positive and a dog detection inside the crowd region.
Expected values are the spec's (pycocotools 2.0.11): all 1.0, and after an 8 px diagonal shift
[0.3636, 0.7525, 0.1262, 0.0, 0.45, 0.6, 0.375, 0.375, 0.375, 0.0, 0.45, 0.6] for bbox and segm.
"""

import json

import numpy as np
import pytest

from evaluation.metrics.detection import (
    CategoryMap,
    check_instances,
    check_results,
    coco_stats,
    decode_segmentation,
    detection_metrics,
    encode_mask,
    full_image_baseline,
    random_boxes_baseline,
)

OBJECTS = [  # (id, image, category, x, y, side)
    (1, 139, 1, 10, 10, 80),
    (2, 139, 18, 150, 20, 95),
    (3, 285, 1, 20, 20, 30),
    (4, 285, 18, 150, 60, 120),
]
CROWD_BOX = (20, 150, 100, 80)  # x, y, w, h of the dog crowd region in image 139
SHIFTED = [0.3636, 0.7525, 0.1262, 0.0, 0.45, 0.6, 0.375, 0.375, 0.375, 0.0, 0.45, 0.6]


def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _uncompressed_rle(x, y, w, h):
    mask = np.zeros((240, 320), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    flat = mask.flatten(order="F")  # column-major, runs start with zeros
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    return {"counts": np.diff(bounds).tolist(), "size": [240, 320]}


def _gt():
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 240, "width": 320} for i in (139, 285)]
    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog"}]
    anns = [
        {"id": a, "image_id": im, "category_id": c, "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0}
        | {"segmentation": _polygon(x, y, s, s)}
        for a, im, c, x, y, s in OBJECTS
    ]
    cx, cy, cw, ch = CROWD_BOX
    crowd = {"id": 5, "image_id": 139, "category_id": 18, "bbox": [cx, cy, cw, ch], "area": cw * ch, "iscrowd": 1}
    anns.append(crowd | {"segmentation": _uncompressed_rle(*CROWD_BOX)})
    return {"images": images, "annotations": anns, "categories": categories}


def _result(image, category, x, y, w, h, score):
    mask = np.zeros((240, 320), dtype=bool)
    mask[max(y, 0) : y + h, max(x, 0) : x + w] = True
    return {"image_id": image, "category_id": category, "bbox": [x, y, w, h], "score": score} | {
        "segmentation": encode_mask(mask)
    }


def _predictions(shift=0):
    out = [_result(im, c, x + shift, y + shift, s, s, 0.9) for _, im, c, x, y, s in OBJECTS]
    out.append(_result(285, 1, 200 + shift, 200 + shift, 20, 20, 0.1))  # low-score false positive
    out.append(_result(139, 18, 40 + shift, 160 + shift, 30, 30, 0.8))  # inside the crowd region
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_exact_predictions_score_one(iou_type):
    gt, _ = check_instances(_gt(), "gt.json")
    np.testing.assert_allclose(coco_stats(gt, _predictions(), iou_type), [1.0] * 12, atol=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_shifted_predictions_give_the_published_numbers(iou_type):
    gt, _ = check_instances(_gt(), "gt.json")
    stats = coco_stats(gt, _predictions(shift=8), iou_type)
    np.testing.assert_allclose(stats, SHIFTED, atol=5e-5)


def test_metrics_names_percent_and_result_file_round_trip(tmp_path):
    gt, counts = check_instances(_gt(), "gt.json")
    assert counts == {
        "degenerate_boxes": 0,
        "short_polygons": 0,
        "crowd": 1,
        "images": 2,
        "annotations": 5,
        "images_without_annotations": 0,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_predictions(shift=8)))  # RLE counts are str: JSON-serialisable as they are
    loaded = check_results(json.loads(path.read_text()), gt, str(path))
    metrics = detection_metrics(gt, loaded)
    assert metrics["bbox_AP"] == pytest.approx(36.36, abs=5e-3)
    assert metrics["segm_AP50"] == pytest.approx(75.25, abs=5e-3)
    assert metrics["num_detections"] == 6
    assert isinstance(loaded[0]["segmentation"]["counts"], str)


def test_empty_results_score_zero_and_minus_one_without_ground_truth():
    gt, _ = check_instances(_gt(), "gt.json")
    stats = coco_stats(gt, [], "bbox")
    assert stats[0] == 0.0 and stats[3] == 0.0  # AP, AP small: ground truth exists, nothing found


def test_mask_encoding_round_trip_and_uncompressed_rle():
    mask = np.zeros((240, 320), dtype=bool)
    mask[5:17, 30:41] = True
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [240, 320]
    np.testing.assert_array_equal(decode_segmentation(rle, 240, 320), mask)
    crowd = decode_segmentation(_uncompressed_rle(*CROWD_BOX), 240, 320)
    assert crowd.sum() == 100 * 80 and crowd[150, 20] and not crowd[149, 20]


def test_category_map_is_id_ordered_and_reversible():
    mapping = CategoryMap([{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}])
    assert [mapping.to_contiguous(i) for i in (1, 18, 90)] == [0, 1, 2]
    assert [mapping.to_coco(i) for i in range(3)] == [1, 18, 90]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"][0].update(category_id=7),
            r"gt\.json: annotation 0 \(id 1\): unknown category_id 7",
        ),
        (lambda d: d["annotations"][1].update(image_id=5), r"gt\.json: annotation 1 \(id 2\): unknown image_id 5"),
        (lambda d: d["annotations"][2].update(segmentation=[[1, 2, 3, 4]]), r"annotation 2 \(id 3\): no polygon"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation 0 \(id 1\): bbox must be"),
        (lambda d: d["annotations"][0].pop("area"), r"annotation 0 lacks 'area'"),
    ],
)
def test_bad_ground_truth_names_file_and_record(change, message):
    data = _gt()
    change(data)
    with pytest.raises(ValueError, match=message):
        check_instances(data, "gt.json")


def test_counted_skips_and_kept_records():
    data = _gt()
    data["annotations"][0]["segmentation"].append([1, 2, 3, 4])  # a short part beside a valid one: dropped
    data["annotations"][3]["bbox"] = [150, 60, 0.5, 120]  # degenerate: kept, as COCOeval keeps it
    data["images"].append({"id": 7, "file_name": "x.jpg", "height": 10, "width": 10})
    checked, counts = check_instances(data, "gt.json")
    assert (counts["short_polygons"], counts["degenerate_boxes"], counts["images_without_annotations"]) == (1, 1, 1)
    assert checked["annotations"][0]["segmentation"] == _polygon(10, 10, 80, 80)
    assert data["annotations"][0]["segmentation"] != checked["annotations"][0]["segmentation"]  # input untouched


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, r"r\.json: result 0: unknown image_id"),
        ({"image_id": 139, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1}, r"result 0: unknown category_id 2"),
        ({"image_id": 139, "category_id": 1, "score": 1}, r"result 0 has neither"),
        ({"image_id": 139, "category_id": 1, "bbox": [0, 0, 1, 1]}, r"result 0 lacks 'score'"),
    ],
)
def test_bad_results_name_file_and_entry(entry, message):
    gt, _ = check_instances(_gt(), "gt.json")
    with pytest.raises(ValueError, match=message):
        check_results([entry], gt, "r.json")


def test_beit3_score_prints_bbox_and_segm_stats(tmp_path, capsys):
    from flows.cli import main

    gt_path, pred_path = tmp_path / "instances_val2017.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(_gt()))
    pred_path.write_text(json.dumps(_predictions(shift=8)))
    args = ["score", "coco_detection", "--predictions", str(pred_path), "--annotations", str(gt_path)]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["bbox_AP"] == pytest.approx(36.36, abs=5e-3) and metrics["segm_AP"] == pytest.approx(36.36, abs=5e-3)
    assert metrics["bbox_ARl"] == pytest.approx(60.0) and metrics["annotation_counts"]["crowd"] == 1
    pred_path.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    assert main(args) == 2
    assert f"{pred_path}: result 0: unknown image_id 999" in capsys.readouterr().err


def test_full_image_baseline_one_whole_image_detection_per_present_category():
    gt, _ = check_instances(_gt(), "gt.json")
    results = full_image_baseline(gt)
    assert [(r["image_id"], r["category_id"]) for r in results] == [(139, 1), (139, 18), (285, 1), (285, 18)]
    assert all(r["bbox"] == [0.0, 0.0, 320.0, 240.0] for r in results)
    assert decode_segmentation(results[0]["segmentation"], 240, 320).all()
    # Whole-image boxes overlap the 120 x 120 dog by 14400 / 76800 < 0.5: no match at any threshold.
    assert coco_stats(gt, results, "bbox")[1] == 0.0


def test_random_boxes_baseline_is_seeded_and_stays_in_the_image():
    gt, _ = check_instances(_gt(), "gt.json")
    results = random_boxes_baseline(gt, per_image=20, seed=1)
    assert len(results) == 40 and results == random_boxes_baseline(gt, per_image=20, seed=1)
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and x + w <= 320 and 0 <= y and y + h <= 240 and r["category_id"] in (1, 18)
