"""Detector pieces: anchors, box coder, matcher, sampling, mask pasting, the COCO adapter, a micro Mask R-CNN."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.dense.detection.boxes import BoxCoder, Matcher, cell_anchors, clip_boxes, grid_anchors, sample_labels
from evaluation.dense.detection.detector import paste_masks
from evaluation.tasks import get_task
from evaluation.tasks.coco_detection import CocoInstancesDataset, masks_to_boxes

MICRO = {"embed_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "patch_size": 16}
TINY_DETECTOR = {
    "out_channels": 32,
    "rpn": {"anchor_sizes": [8, 16, 32, 64, 128], "pre_nms_topk": [200, 200], "post_nms_topk": [50, 50]},
    "roi_heads": {"batch_size_per_image": 64, "conv_dim": 16, "num_box_convs": 1, "fc_dim": 32, "num_mask_convs": 1},
}


def test_cell_anchors_keep_area_and_ratio():
    cells = cell_anchors([32], [0.5, 1.0, 2.0])
    w, h = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 1024.0))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))
    grid = grid_anchors(cells, 8, 2, 3)  # (y, x, anchor) order: index 3 * loc + anchor
    assert grid.shape == (18, 4)
    torch.testing.assert_close(grid[3 * 1 + 1], cells[1] + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    torch.testing.assert_close(grid[3 * 3 + 1], cells[1] + torch.tensor([0.0, 8.0, 0.0, 8.0]))


def test_box_coder_round_trip_and_hand_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre moves +10 in x, width doubles
    deltas = coder.encode(ref, target)
    torch.testing.assert_close(deltas, torch.tensor([[10.0, 0.0, 5.0 * float(np.log(2.0)), 0.0]]))
    torch.testing.assert_close(coder.decode(deltas, ref), target)
    two = coder.decode(torch.cat([deltas, torch.zeros(1, 4)], dim=1), ref)  # one reference, two classes
    torch.testing.assert_close(two, torch.cat([target, ref], dim=1))


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.1, 0.65, 0.25, 0.0]])
    matches, labels = Matcher((0.3, 0.7), (0, -1, 1))(iou)
    assert matches.tolist() == [0, 1, 1, 0] and labels.tolist() == [1, -1, 0, 0]
    _, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, 0, 0]  # gt 1's best prediction (0.65) becomes foreground
    _, labels = Matcher((0.5,), (0, 1))(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0]


def test_sampling_caps_foreground_fraction():
    labels = torch.tensor([1] * 50 + [0] * 100 + [-1] * 10)
    pos, neg = sample_labels(labels, 64, 0.25, background=0)
    assert len(pos) == 16 and len(neg) == 48
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all() and len(set(pos.tolist())) == 16


def test_clip_boxes_class_specific():
    boxes = torch.tensor([[-5.0, 2.0, 50.0, 8.0, 1.0, -1.0, 3.0, 40.0]])
    torch.testing.assert_close(clip_boxes(boxes, 30, 20), torch.tensor([[0.0, 2.0, 20.0, 8.0, 1.0, 0.0, 3.0, 30.0]]))


def test_masks_to_boxes_and_paste_masks_round_trip():
    mask = torch.zeros(1, 30, 40, dtype=torch.bool)
    mask[0, 5:15, 10:30] = True
    boxes = masks_to_boxes(mask)
    assert boxes.tolist() == [[10.0, 5.0, 30.0, 15.0]]
    pasted = paste_masks(torch.ones(1, 28, 28), boxes, 30, 40) > 0.5
    assert torch.equal(pasted, mask)


def _write_split(root, split, objects, size=(96, 128)):
    """A COCO split of plain images; `objects` per image: (category id, x, y, w, h, iscrowd)."""
    height, width = size
    images, anns = [], []
    for index, objs in enumerate(objects):
        image_id = 10 + index
        name = f"{image_id:012d}.jpg"
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((height, width, 3), 40 * index, dtype=np.uint8)).save(root / split / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for cat, x, y, w, h, crowd in objs:
            seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h]}
                | {"area": w * h, "iscrowd": crowd, "segmentation": seg}
            )
    categories = [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    (root / "annotations").mkdir(exist_ok=True)
    data = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_dataset_items_and_counted_skips(tmp_path):
    objects = [[(3, 10, 10, 40, 30, 0), (7, 60, 20, 30, 50, 0), (7, 0, 0, 5, 0.5, 0)], [(3, 0, 0, 50, 50, 1)], []]
    _write_split(tmp_path, "train2017", objects)
    _write_split(tmp_path, "val2017", objects)
    train = CocoInstancesDataset(tmp_path, "train", 64, scale_range=(1.0, 1.0))
    assert len(train) == 1 and train.classes == ["car", "train"]
    assert train.counts["train_images_skipped_without_targets"] == 2  # crowd-only and empty image
    assert train.counts["train_annotations_skipped"] == 1 and train.counts["degenerate_boxes"] == 1
    item = train[0]
    assert item["image"].shape == (3, 64, 64) and item["classes"].tolist() == [0, 1]
    assert item["masks"].shape == (2, 64, 64)
    torch.testing.assert_close(item["boxes"], masks_to_boxes(item["masks"]))
    val = CocoInstancesDataset(tmp_path, "val", 64)
    assert len(val) == 3 and val[0]["scale"] == 0.5 and val[0]["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="divisible by 64"):
        CocoInstancesDataset(tmp_path, "val", 96)


def test_micro_detector_trains_and_predicts_official_records(tmp_path):
    _write_split(tmp_path, "train2017", [[(3, 10, 10, 40, 30, 0), (7, 60, 20, 30, 50, 0)]] * 2)
    _write_split(tmp_path, "val2017", [[(3, 10, 10, 40, 30, 0)], []])
    task = get_task("coco_detection")
    torch.manual_seed(0)
    model = task.build_model("beit3_tiny", num_classes=2, detector=TINY_DETECTOR, **MICRO, img_size=64)
    train = task.dataset("train", tmp_path, None, 64, scale_range=(1.0, 1.0))
    batch = task.collate([train[0], train[1]])
    model.train()
    loss, metrics = task.loss(model, batch)
    assert set(metrics) >= {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    loss.backward()
    assert model.beit3.encoder.layers[0].ffn.A.fc1.weight.grad.abs().sum() > 0
    # An image whose crop removed every object still trains (all its boxes are background).
    empty = dict(train[0], boxes=torch.zeros(0, 4), classes=torch.zeros(0, dtype=torch.long))
    empty["masks"] = torch.zeros(0, 64, 64, dtype=torch.bool)
    loss, metrics = task.loss(model, task.collate([empty, train[1]]))
    assert torch.isfinite(loss)
    loss, _ = task.loss(model, task.collate([empty, empty]))
    assert torch.isfinite(loss)
    val = task.dataset("val", tmp_path, None, 64)
    model.eval()
    records = task.predict(model, task.collate([val[0], val[1]]))
    metrics = task.evaluate(records, val)
    assert {"bbox_AP", "segm_AP", "bbox_ARl", "segm_AR100"} <= set(metrics)
    path = task.write_submission(records, tmp_path / "out.json", val)
    written = json.loads(path.read_text())
    assert all(d["category_id"] in (3, 7) and isinstance(d["segmentation"]["counts"], str) for d in written)
