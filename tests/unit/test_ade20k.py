"""ADE20K: the spec's fixture (reduce_zero_label, resize rule, slide-window grid), pipelines, bad input, scoring."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.dense.segmentation.inference import predict_probabilities, slide_logits, window_grid
from evaluation.dense.segmentation.scoring import score_label_maps
from evaluation.dense.segmentation.transforms import (
    random_crop,
    reduce_zero_label,
    rescale_size,
    train_pipeline,
)
from evaluation.tasks import get_task
from evaluation.tasks.ade20k import pixel_cross_entropy
from evaluation.tasks.ade20k_data import ADE20KDataset

RAW_VALUES = (0, 1, 2, 150)


def build_ade_fixture(root, width=96, height=64):
    """ADEChallengeData2016 with two images per split; label PNGs hold 0, 1, 2 and 150."""
    rng = np.random.default_rng(0)
    for split, prefix in (("training", "train"), ("validation", "val")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in (1, 2):
            stem = f"ADE_{prefix}_{index:08d}"
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{stem}.jpg")
            label = np.zeros((height, width), dtype=np.uint8)
            for band, value in enumerate(RAW_VALUES):  # four vertical bands
                label[:, band * width // 4 : (band + 1) * width // 4] = value
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.01\t1\t1\tclass{i};alias" for i in range(1, 151)]
    (root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def ade_root(tmp_path):
    return build_ade_fixture(tmp_path / "ADEChallengeData2016")


def test_reduce_zero_label_maps_the_raw_ids():
    assert reduce_zero_label(np.array(RAW_VALUES + (255,), dtype=np.uint8)).tolist() == [255, 0, 1, 149, 255]


def test_dataset_reads_the_layout_with_reduced_labels(ade_root):
    dataset = ADE20KDataset(ade_root, "val")
    assert [stem for stem, _, _ in dataset.items] == ["ADE_val_00000001", "ADE_val_00000002"]
    assert len(dataset.classes) == 150 and dataset.classes[0] == "class1"
    assert sorted(np.unique(dataset.label("ADE_val_00000001")).tolist()) == [0, 1, 149, 255]
    item = dataset[0]
    assert item["image"].shape == (3, 64, 96) and item["image"].dtype == torch.float32


def test_test_resize_rule_of_the_spec():
    assert rescale_size(512, 683) == (512, 683)
    assert rescale_size(300, 1000) == (512, 1707)  # factor min(2.048, 1.707)
    assert rescale_size(200, 1000) == (410, 2048)  # factor 2.048


def test_slide_window_grid_of_the_spec():
    assert window_grid(512, 683) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    wide = window_grid(410, 2048)
    assert len(wide) == 6 and all((t, b) == (0, 410) for t, b, _, _ in wide)  # shorter than the crop: padded
    assert [left for _, _, left, _ in wide] == [0, 341, 682, 1023, 1364, 1536]


def test_overlapping_windows_are_averaged():
    calls = []

    def model(batch):  # window k (1-based) predicts k everywhere; one window per call
        calls.append(batch.shape)
        return torch.full((batch.shape[0], 1, 128, 128), float(len(calls)))

    logits = slide_logits(model, torch.zeros(3, 512, 683), num_classes=1, batch=1)
    assert calls == [(1, 3, 512, 512)] * 2
    row = logits[0, 0]
    assert torch.all(row[:171] == 1) and torch.all(row[171:512] == 1.5) and torch.all(row[512:] == 2)


def test_windows_smaller_than_the_crop_are_padded_and_cut():
    conv = torch.nn.Conv2d(3, 5, kernel_size=1)
    image = torch.randn(3, 40, 70)
    with torch.no_grad():
        logits = slide_logits(conv, image, num_classes=5, crop=32, stride=21)
        assert torch.allclose(logits, conv(image[None])[0], atol=1e-5)  # a pointwise model is window-invariant
        probs = predict_probabilities(conv, image, 5, img_scale=(70, 40), crop=32, stride=21, flip=True)
        assert torch.allclose(probs, conv(image[None])[0].softmax(0), atol=1e-5)


def test_crop_rejects_crops_dominated_by_one_class():
    label = np.zeros((64, 256), dtype=np.uint8)
    label[:, 192:] = 1
    image = np.zeros((64, 256, 3), dtype=np.uint8)
    passed = 0
    for seed in range(200):
        _, crop = random_crop(image, label, np.random.default_rng(seed), crop=64, cat_max_ratio=0.75)
        counts = np.bincount(crop.ravel(), minlength=2)
        passed += counts.min() > 0 and counts.max() / counts.sum() < 0.75
    # A single uniform draw passes with p = 31 / 193 = 0.16; with 10 redraws p = 1 - 0.84^11 = 0.85.
    assert passed / 200 > 0.7


def test_train_pipeline_pads_to_the_crop_with_ignore():
    image = np.full((20, 30, 3), 128, dtype=np.uint8)
    label = np.ones((20, 30), dtype=np.uint8)
    out_image, out_label = train_pipeline(
        image, label, np.random.default_rng(0), img_scale=(30, 20), ratio_range=(1.0, 1.0), crop_size=32
    )
    assert out_image.shape == (3, 32, 32) and out_label.shape == (32, 32)
    assert np.all(out_label[20:] == 255) and np.all(out_label[:, 30:] == 255) and np.all(out_label[:20, :30] == 1)
    assert np.all(out_image[:, 20:] == 0)


def test_train_items_have_the_crop_size(ade_root):
    dataset = get_task("ade20k").dataset("train", ade_root, None, 32, img_scale=(96, 64))
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
    assert set(item["label"].unique().tolist()) <= {0, 1, 149, 255}


def test_label_of_another_size_is_an_error_naming_the_file(ade_root):
    bad = ade_root / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(bad)
    dataset = ADE20KDataset(ade_root, "val")
    with pytest.raises(ValueError, match="ADE_val_00000002.png: label is 10x10 but its image is 96x64"):
        dataset[1]


def test_label_value_out_of_range_is_an_error_naming_the_file(ade_root):
    bad = ade_root / "annotations" / "training" / "ADE_train_00000001.png"
    label = np.full((64, 96), 255, dtype=np.uint8)
    label[0, 0] = 151
    Image.fromarray(label).save(bad)
    dataset = ADE20KDataset(ade_root, "train")
    with pytest.raises(ValueError, match=r"ADE_train_00000001.png: label values \[151\] outside 0..150"):
        dataset[0]


def test_image_without_label_is_an_error(ade_root):
    (ade_root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(ValueError, match="ADE_val_00000001.jpg: no label file"):
        ADE20KDataset(ade_root, "val")


def test_loss_averages_over_all_pixels_including_ignored():
    label = torch.tensor([[[0, 1], [255, 2]]])
    loss = pixel_cross_entropy(torch.zeros(1, 4, 2, 2), label)
    assert loss.item() == pytest.approx(math.log(4) * 3 / 4)  # 3 labelled pixels of 4, uniform logits


def test_exact_predictions_score_100_and_the_submission_scores_the_same(ade_root, tmp_path):
    task = get_task("ade20k")
    dataset = task.dataset("val", ade_root, None, 32)
    records = [
        {"image_id": stem, "pred": torch.from_numpy(np.where(dataset.label(stem) == 255, 0, dataset.label(stem)))}
        for stem, _, _ in dataset.items
    ]
    metrics = task.evaluate(records, dataset)
    assert metrics["mIoU"] == 100 and metrics["aAcc"] == 100 and metrics["mAcc"] == 100
    assert metrics["per_class_IoU"]["class1"] == 100 and metrics["per_class_IoU"]["class3"] is None
    zipped = task.write_submission(records, tmp_path / task.submission_name("val"), dataset)
    assert zipped.suffix == ".zip"
    scored = score_label_maps(zipped, ade_root / "annotations" / "validation")
    assert scored == {"mIoU": 100.0, "aAcc": 100.0, "mAcc": 100.0, "num_images": 2}
    # One wrong band in one image: class 150 (id 149) predicted as class 2 (id 1) on 16 of 96 columns.
    records[0]["pred"][:, 72:] = 1
    wrong = task.evaluate(records, dataset)
    # class 0: IoU 1; class 1: I 2*64*24, U I + 64*24 -> 2/3; class 149: I 64*24, U 2*64*24 -> 1/2.
    assert wrong["mIoU"] == pytest.approx(100 * (1 + 2 / 3 + 1 / 2) / 3)
    assert wrong["aAcc"] == pytest.approx(100 * 5 / 6)


def test_scoring_rejects_missing_and_out_of_range_predictions(ade_root, tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    Image.fromarray(np.ones((64, 96), dtype=np.uint8)).save(folder / "ADE_val_00000001.png")
    with pytest.raises(ValueError, match="no prediction for 1 annotated images"):
        score_label_maps(folder, ade_root / "annotations" / "validation")
    Image.fromarray(np.zeros((64, 96), dtype=np.uint8)).save(folder / "ADE_val_00000002.png")
    with pytest.raises(ValueError, match=r"ADE_val_00000002.png: prediction values must lie in 1..150"):
        score_label_maps(folder, ade_root / "annotations" / "validation")


def test_segmentation_model_shapes_and_layer_decay():
    from evaluation.tasks import layer_decay_groups

    task = get_task("ade20k")
    small = dict(embed_dim=64, num_heads=2, ffn_dim=128, num_layers=4, vocab_size=100)
    model = task.build_model("beit3_tiny", num_classes=7, **small)
    logits, aux = model(torch.randn(2, 3, 64, 96), with_aux=True)
    assert logits.shape == (2, 7, 16, 24) and aux.shape == (2, 7, 4, 6)
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.05)
    top = {p for g in groups if g["lr_scale"] == 1.0 for p in g["params"]}
    assert set(model.decode_head.parameters()) <= top and set(model.auxiliary_head.parameters()) <= top
    vitdet = task.build_model("beit3_tiny", num_classes=7, dense={"pyramid": "vitdet", "out_channels": 32}, **small)
    assert vitdet.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7, 16, 16)


def test_recipe_is_the_beit2_reference():
    recipes = get_task("ade20k").recipes
    assert recipes["base"]["lr"] == 5e-5 and recipes["base"]["layer_decay"] == 0.75
    assert recipes["large"]["lr"] == 4e-5 and recipes["large"]["layer_decay"] == 0.9
    assert recipes["base"]["img_size"] == 512 and recipes["base"]["batch_size"] == 16
    assert recipes["base"]["epochs"] == round(160_000 * 16 / 20_210)


def test_beit3_score_prints_miou_aacc_macc(ade_root, tmp_path, capsys):
    import json

    from flows.cli import main

    folder = tmp_path / "pred"
    folder.mkdir()
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        raw = np.array(Image.open(ade_root / "annotations" / "validation" / f"{stem}.png"))
        Image.fromarray(np.where(raw == 0, 1, raw).astype(np.uint8)).save(folder / f"{stem}.png")
    args = ["score", "ade20k", "--predictions", str(folder), "--annotations", str(ade_root / "annotations/validation")]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"mIoU": 100.0, "aAcc": 100.0, "mAcc": 100.0, "num_images": 2}
    (folder / "ADE_val_00000002.png").unlink()
    assert main(args) == 2
    assert "no prediction for 1 annotated images" in capsys.readouterr().err


def test_majority_class_baseline(ade_root):
    from evaluation.dense.segmentation.baseline import majority_class_baseline

    task = get_task("ade20k")
    train, val = (task.dataset(split, ade_root, None, 32) for split in ("train", "val"))
    baseline = majority_class_baseline(train, val)
    # Classes 0, 1 and 149 tie on the training pixels; the first (0, "class1") is predicted everywhere:
    # IoU 1/3 for class 0 (it covers a third of the labelled pixels), 0 for the two others.
    assert baseline["majority_class"] == "class1" and baseline["num_images"] == 2
    assert baseline["mIoU"] == pytest.approx(100 / 9) and baseline["aAcc"] == pytest.approx(100 / 3)
    assert baseline["mAcc"] == pytest.approx(100 / 3)
