"""Trivial baselines of the units against values computed by hand on small fixtures, with the real scorers."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.baselines import (
    binomial_stderr,
    bootstrap_stderr,
    margin,
    paired_difference,
    unit_baseline,
    zeroshot_baseline,
)
from evaluation.baselines.retrieval import random_ranking_recall
from evaluation.metrics.retrieval import retrieval_recall


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_standard_errors_and_margin():
    assert binomial_stderr(20.0, 10) == pytest.approx(100 * math.sqrt(0.2 * 0.8 / 10))
    assert binomial_stderr(0.0, 5) == 0.0
    values = [1.0, 0.6, 0.0] * 40  # 120 items: bootstrap ~ population sd / sqrt(n)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    boot = bootstrap_stderr(values, lambda xs: sum(xs) / len(xs))
    assert boot == pytest.approx(sd / math.sqrt(len(values)), rel=0.15)
    assert boot == bootstrap_stderr(values, lambda xs: sum(xs) / len(xs))  # seeded
    assert margin(50.0, 20.0, 10.0) == 3.0 and margin(None, 20.0, 1.0) is None and margin(30.0, 20.0, 0.0) is None


def test_paired_difference_by_hand():
    # Differences 4, -2, 7, 3: mean 3, sample variance (1 + 25 + 16 + 0) / 3 = 14, stderr sqrt(14 / 4).
    got = paired_difference([44.0, 38.0, 50.0, 41.0], [40.0, 40.0, 43.0, 38.0])
    assert got["n"] == 4 and got["wins"] == 3 and got["losses"] == 1 and got["ties"] == 0
    assert got["mean"] == pytest.approx(43.25) and got["other_mean"] == pytest.approx(40.25)
    assert got["difference"] == pytest.approx(3.0) and got["difference_stderr"] == pytest.approx(math.sqrt(3.5))
    assert paired_difference([1.0], [1.0]) == {
        "n": 1,
        "mean": 1.0,
        "other_mean": 1.0,
        "difference": 0.0,
        "difference_stderr": None,
        "wins": 0,
        "losses": 0,
        "ties": 1,
    }
    # The same recalls averaged in another order differ in the last bit: a tie, not a win.
    recalls = [0.1, 0.2, 0.3, 1.0, 5.0, 9.7]
    forward, backward = sum(recalls) / 6, sum(reversed(recalls)) / 6
    assert forward != backward
    tied = paired_difference([forward, 2.0], [backward, 1.0])
    assert (tied["wins"], tied["losses"], tied["ties"]) == (1, 0, 1)
    with pytest.raises(ValueError, match="equal"):
        paired_difference([1.0, 2.0], [1.0])


def test_imagenet_majority_against_chance(tmp_path):
    # Six classes; training counts c0..c5 = 1, 3, 2, 0, 1, 1 -> frequency ranking c1, c2, c0, c4, c5, c3.
    for c, count in enumerate([1, 3, 2, 0, 1, 1]):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(count):
            _png(tmp_path / "train" / f"c{c}" / f"{i}.png")
    val = [1, 1, 0, 3, 3, 2, 5, 4, 3, 3]
    for i, c in enumerate(val):
        _png(tmp_path / "val" / f"c{c}" / f"v{i}.png")
    out = unit_baseline("imagenet", tmp_path, "val")
    # acc1: majority c1 hits 2 of 10 = 20% > chance 1/6; acc5: the top five {1, 2, 0, 4, 5} hit 6 of 10 = 60%
    # < chance 5/6, so the larger (chance) is the baseline.
    assert out["metrics"]["acc1"] == pytest.approx(20.0) and out["metrics"]["chance_acc1"] == pytest.approx(100 / 6)
    assert out["metrics"]["majority_acc5"] == pytest.approx(60.0) and out["metrics"]["acc5"] == pytest.approx(500 / 6)
    assert out["stderr"]["acc1"] == pytest.approx(100 * math.sqrt(0.2 * 0.8 / 10))
    assert out["stderr"]["acc5"] == pytest.approx(100 * math.sqrt(5 / 6 * 1 / 6 / 10))
    assert "'c1'" in out["predictor"] and out["num_items"] == 10 and out["split"] == "val"


def _nlvr2_line(identifier, label):
    return json.dumps({"identifier": identifier, "sentence": "s", "label": label}) + "\n"


def test_nlvr2_majority_label(tmp_path):
    data = tmp_path / "nlvr2" / "data"
    data.mkdir(parents=True)
    train = [_nlvr2_line(f"train-{i}-0-0", label) for i, label in enumerate(["False", "True", "False"])]
    # The dev split's own majority is "True": a baseline read from the split it is scored on would score 60.
    dev = [_nlvr2_line(f"dev-{i}-0-{i}", label) for i, label in enumerate(["True", "True", "True", "False", "False"])]
    (data / "train.json").write_text("".join(train))
    (data / "dev.json").write_text("".join(dev))
    out = unit_baseline("nlvr2", tmp_path, "dev")
    assert out["metrics"]["accuracy"] == pytest.approx(40.0)  # the training majority "False" on 2 of 5
    assert out["stderr"]["accuracy"] == pytest.approx(100 * math.sqrt(0.4 * 0.6 / 5))
    assert "False" in out["predictor"]


def _vqa_files(root, subtype, questions):
    top = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco"}
    qs = [{"image_id": 1, "question": "q?", "question_id": qid} for qid, _ in questions]
    anns = [
        {
            "question_id": qid,
            "image_id": 1,
            "question_type": "what",
            "answer_type": "other",
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }
        for qid, answers in questions
    ]
    (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(top | {"questions": qs}))
    (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(top | {"annotations": anns}))


def test_vqav2_most_frequent_answer_with_the_official_metric(tmp_path):
    # Training annotators answered "dog" 18 times and "yes" 12 -> "dog", although the questions' single
    # `multiple_choice_answer` is "yes" twice of three, and the val questions' own answers favour "yes".
    # Held-out val questions (rest_val_images: 1 puts val image 1 in the evaluation split): "dog" x10 -> 1;
    # "dog" x2 -> the leave-one-out mean (2 * 1/3 + 8 * 2/3) / 10 = 0.6; no "dog" -> 0. Overall
    # (1 + 0.6 + 0 + 0) / 4 = 40%; "yes" would score 50%.
    mixed = ["yes"] * 6 + ["dog"] * 4
    _vqa_files(tmp_path, "train2014", [(1, ["dog"] * 10), (2, mixed), (3, mixed)])
    val = [(4, ["dog"] * 10), (5, ["dog"] * 2 + ["cat"] * 8), (6, ["yes"] * 10), (7, ["yes"] * 10)]
    _vqa_files(tmp_path, "val2014", val)
    options = {"min_answer_count": 1, "rest_val_images": 1}
    out = unit_baseline("vqav2", tmp_path, "val", options=options)
    assert "'dog'" in out["predictor"]
    assert out["metrics"]["overall"] == pytest.approx(40.0)
    assert out["num_items"] == 4
    # Bootstrap over four questions; the plug-in value is sd / sqrt(n) of (1, 0.6, 0, 0).
    values = [1.0, 0.6, 0.0, 0.0]
    sd = math.sqrt(sum((v - 0.4) ** 2 for v in values) / 4)
    assert out["stderr"]["overall"] == pytest.approx(100 * sd / math.sqrt(4), rel=0.25)


def _karpathy(root, entries):
    images = [
        {
            "filepath": "train2014",
            "filename": f"{i}.jpg",
            "imgid": i,
            "cocoid": i,
            "split": split,
            "sentids": [],
            "sentences": [
                {"raw": c, "tokens": c.split(), "imgid": i, "sentid": 10 * i + j} for j, c in enumerate(caps)
            ],
        }
        for i, (split, caps) in enumerate(entries)
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))


def test_captioning_constant_caption_with_the_official_scorer(tmp_path):
    # "a dog on grass" describes three of the five training images: it is the caption that suits most training
    # images, although "xyzzy plugh", four references of one image, is the most frequent one (chosen by frequency
    # alone, it would be the baseline). On the test images, whose references all contain "a dog on grass" word
    # for word, BLEU-1 is 1 (every word matched, hypothesis as long as the closest reference).
    dog = "a dog on grass"
    train = [("train", [dog, f"picture number {i}"]) for i in range(3)] + [("restval", ["a red car parked"])]
    train += [("train", ["xyzzy plugh"] * 4)]
    test = [("test", [dog, "a brown dog outside"]), ("test", [dog, "grass and a dog"]), ("test", [dog, "dog"])]
    _karpathy(tmp_path, train + test)
    out = unit_baseline("coco_captioning", tmp_path, "test")
    assert repr(dog) in out["predictor"]
    assert out["metrics"]["BLEU_1"] == pytest.approx(1.0, abs=1e-6)
    # Every test image has the caption among its references, so each of its n-grams has document frequency
    # N in any resample: IDF log(N / N) = 0, and CIDEr is 0 on the set and on every bootstrap resample.
    assert out["metrics"]["CIDEr"] == 0.0 and out["stderr"]["CIDEr"] == 0.0
    assert out["num_items"] == 3


def test_retrieval_random_ranking_closed_form_by_hand():
    out = random_ranking_recall([1, 1, 1, 1])  # four images, one caption each: R@K = K / 4
    assert out["metrics"]["tr_r1"] == pytest.approx(25.0) and out["metrics"]["ir_r1"] == pytest.approx(25.0)
    assert out["metrics"]["tr_r5"] == out["metrics"]["ir_r10"] == pytest.approx(100.0)
    assert out["stderr"]["tr_r1"] == pytest.approx(100 * math.sqrt(0.25 * 0.75 / 4))
    assert out["stderr"]["tr_r5"] == 0.0
    two = random_ranking_recall([2, 2, 2])  # six captions: an image misses at 1 with probability 4/6
    assert two["metrics"]["tr_r1"] == pytest.approx(100 * (1 - 4 / 6))
    assert two["metrics"]["ir_r1"] == pytest.approx(100 / 3)
    assert two["metrics"]["tr_r5"] == pytest.approx(100.0)  # C(4, 5) = 0: five of six always include one


def test_retrieval_closed_form_matches_the_scorer_on_random_rankings():
    counts = [1, 2, 1, 3, 1, 1, 2, 1, 1, 2, 1, 1]  # 12 images, 17 captions
    expected = random_ranking_recall(counts)
    text_to_image = torch.tensor([row for row, m in enumerate(counts) for _ in range(m)])
    generator = torch.Generator().manual_seed(1)  # not the stderr simulation's seed (0): independent draws
    draws = [retrieval_recall(torch.rand(12, 17, generator=generator), text_to_image) for _ in range(1500)]
    for name in ("tr_r1", "tr_r5", "ir_r1", "ir_r10", "average_score"):
        values = [d[name] for d in draws]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert mean == pytest.approx(expected["metrics"][name], abs=4 * sd / math.sqrt(len(values)) + 1e-9), name
        assert sd == pytest.approx(expected["stderr"][name], rel=0.12), name


def test_zeroshot_unit_uses_its_test_split(tmp_path):
    entries = [("train", ["x"]), ("test", ["a", "b"]), ("test", ["c"]), ("test", ["d"]), ("test", ["e"])]
    images = [
        {
            "filename": f"{i}.jpg",
            "imgid": i,
            "split": split,
            "sentids": [],
            "sentences": [{"raw": c, "tokens": [c], "imgid": i, "sentid": 10 * i + j} for j, c in enumerate(caps)],
        }
        for i, (split, caps) in enumerate(entries)
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    out = zeroshot_baseline("flickr30k_zeroshot", tmp_path)
    assert out["metrics"]["num_images"] == 4 and out["metrics"]["num_texts"] == 5
    assert out["metrics"]["ir_r1"] == pytest.approx(25.0)
    # Text retrieval at 1 among five captions: 2/5 for the image with two, 1/5 for the others.
    assert out["metrics"]["tr_r1"] == pytest.approx(100 * (2 / 5 + 3 * 1 / 5) / 4)


def _ade_image(root, split, stem, label):
    for folder, array, mode in (("images", np.zeros((*label.shape, 3), np.uint8), "RGB"), ("annotations", label, "L")):
        path = root / folder / split / f"{stem}.{'jpg' if folder == 'images' else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(path)


def test_ade20k_majority_class_everywhere(tmp_path):
    (tmp_path / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n1\t0\t0\t0\tsky\n2\t0\t0\t0\ttree\n3\t0\t0\t0\tcar\n"
    )
    # Raw ids: 0 = ignored, 1..3 = sky, tree, car. Training pixels: sky 16, tree 8, car 8 -> sky everywhere.
    _ade_image(tmp_path, "training", "a", np.full((4, 4), 1, np.uint8))
    _ade_image(tmp_path, "training", "b", np.repeat([[2], [2], [3], [3]], 4, axis=1).astype(np.uint8))
    # Test image c: sky 8, tree 4, ignored 4; image d: car 16. Predicting sky: IoU sky = 8 / (28 + 8 - 8),
    # tree 0, car 0 -> mIoU 9.52; aAcc 8 / 28; mAcc (1 + 0 + 0) / 3.
    _ade_image(tmp_path, "validation", "c", np.array([[1] * 4, [1] * 4, [2] * 4, [0] * 4], np.uint8))
    _ade_image(tmp_path, "validation", "d", np.full((4, 4), 3, np.uint8))
    out = unit_baseline("ade20k", tmp_path, "val", img_size=16)
    assert "'sky'" in out["predictor"]
    assert out["metrics"]["mIoU"] == pytest.approx(100 * (8 / 28) / 3)
    assert out["metrics"]["aAcc"] == pytest.approx(100 * 8 / 28) and out["metrics"]["mAcc"] == pytest.approx(100 / 3)
    # Resamples of two images: {c, c} -> mIoU (8/12 + 0) / 2 (car absent), {d, d} -> 0, {c, d} -> 9.52, with
    # probabilities 1/4, 1/4, 1/2.
    values, weights = [100 * (8 / 12) / 2, 0.0, 100 * (8 / 28) / 3], [0.25, 0.25, 0.5]
    mean = sum(v * w for v, w in zip(values, weights, strict=True))
    sd = math.sqrt(sum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True)))
    assert out["stderr"]["mIoU"] == pytest.approx(sd, rel=0.2)


def _instances(images, annotations):
    categories = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    anns = [
        {
            "id": i + 1,
            "image_id": image_id,
            "category_id": cat,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        }
        for i, (image_id, cat, (x, y, w, h)) in enumerate(annotations)
    ]
    imgs = [{"id": i, "file_name": f"{i}.jpg", "height": 10, "width": 10} for i in images]
    return {"images": imgs, "annotations": anns, "categories": categories}


def test_coco_detection_whole_image_prior(tmp_path):
    (tmp_path / "annotations").mkdir()
    # Training: three cats, one dog -> a whole-image "cat" box on every test image.
    train = _instances([1, 2], [(1, 1, (0, 0, 4, 4)), (1, 1, (5, 5, 4, 4)), (2, 1, (0, 0, 9, 9)), (2, 3, (1, 1, 3, 3))])
    # Test: image 10 holds one whole-image cat (IoU 1: a hit), image 11 one 5 x 5 cat (IoU 0.25: a miss and a
    # false positive). Equal scores keep image order in COCOeval, so precision is 1 up to recall 0.5 and the
    # interpolated AP is 51 / 101 of the 101 recall points at every IoU threshold.
    val = _instances([10, 11], [(10, 1, (0, 0, 10, 10)), (11, 1, (0, 0, 5, 5))])
    for split, data in (("train2017", train), ("val2017", val)):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    out = unit_baseline("coco_detection", tmp_path, "val", img_size=64)
    assert "'cat'" in out["predictor"]
    assert out["metrics"]["bbox_AP"] == pytest.approx(100 * 51 / 101)
    assert out["stderr"]["bbox_AP"] > 0 and out["num_items"] == 2


def test_coco_detection_random_boxes_when_the_whole_image_misses(tmp_path):
    (tmp_path / "annotations").mkdir()
    train = _instances([1], [(1, 1, (0, 0, 4, 4))])
    # 30 x 30 objects in 64 x 64 images: the whole-image box has IoU 0.22 with each (a miss at every threshold),
    # while some of 100 random boxes per image overlap them by more than half.
    val = _instances([10, 11, 12], [(10, 1, (5, 5, 30, 30)), (11, 1, (30, 20, 30, 30)), (12, 3, (10, 30, 30, 30))])
    for img in val["images"]:
        img["height"] = img["width"] = 64
    for split, data in (("train2017", train), ("val2017", val)):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    out = unit_baseline("coco_detection", tmp_path, "val", img_size=64)
    assert out["predictor"] == "100 random boxes per image"
    assert 0 < out["metrics"]["bbox_AP"] < 100 and out["stderr"]["bbox_AP"] > 0


def test_random_init_like_keeps_the_architecture_and_draws_new_weights(tmp_path):
    from support.model_inputs import small_model

    from beit3_core.checkpoint import load_checkpoint, save_checkpoint
    from evaluation.baselines.scratch import random_init_like

    source = small_model(text_embed_init_std=1.0)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(1.0)  # stands for trained weights
    save_checkpoint(source, tmp_path / "pretrained.safetensors")
    first = load_checkpoint(random_init_like(tmp_path / "pretrained.safetensors", tmp_path / "a.safetensors", seed=3))
    again = load_checkpoint(random_init_like(tmp_path / "pretrained.safetensors", tmp_path / "b.safetensors", seed=3))
    other = load_checkpoint(random_init_like(tmp_path / "pretrained.safetensors", tmp_path / "c.safetensors", seed=4))
    assert first.config == source.config
    trained, drawn = source.state_dict(), first.state_dict()
    assert drawn.keys() == trained.keys()
    assert not any(drawn[k].equal(trained[k]) for k in drawn if drawn[k].is_floating_point())
    assert all(v.equal(again.state_dict()[k]) for k, v in drawn.items())  # seeded
    weights = [k for k, v in drawn.items() if v.ndim == 2]
    assert not any(drawn[k].equal(other.state_dict()[k]) for k in weights)
    # The config's init scheme: the text embedding drawn at std 1.0, as the pretraining recipe asks.
    assert drawn["text_embed.weight"].std() == pytest.approx(1.0, rel=0.1)
