"""Tests for COCO / Flickr30K retrieval: Karpathy parsing, dual-encoder heads, symmetric InfoNCE, recall."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.model_inputs import SMALL

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.tasks import get_task
from evaluation.tasks.retrieval import contrastive_loss

COCO = get_task("coco_retrieval")
FLICKR = get_task("flickr30k_retrieval")
DIM = SMALL["embed_dim"]
CAPTIONS = ["a dog runs on grass", "a man rides a bike", "two birds on a wire", "a red car parked"]
SPLITS = ["train", "restval", "val", "val", "test", "test", "test"]


def _images(root, coco):
    images = []
    for imgid, split in enumerate(SPLITS):
        if coco:
            folder = "train2014" if split in ("train", "restval") else "val2014"
            filename = f"COCO_{folder}_{500 + imgid:012d}.jpg"
            entry = {"filepath": folder, "filename": filename, "cocoid": 500 + imgid}
        else:
            folder, filename = "flickr30k-images", f"{1000092795 + imgid}.jpg"
            entry = {"filename": filename}
        (root / folder).mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (30 * imgid, 100, 200 - 20 * imgid)).save(root / folder / filename)
        raws = [CAPTIONS[(imgid + j) % 4] for j in range(2)]
        sentences = [
            {"raw": r, "tokens": r.split(), "imgid": imgid, "sentid": 2 * imgid + j} for j, r in enumerate(raws)
        ]
        images.append(
            entry | {"imgid": imgid, "split": split, "sentids": [2 * imgid, 2 * imgid + 1]} | {"sentences": sentences}
        )
    return images


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    coco, flickr = tmp_path_factory.mktemp("coco"), tmp_path_factory.mktemp("f30k")
    (coco / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": _images(coco, True)}))
    (flickr / "dataset_flickr30k.json").write_text(
        json.dumps({"dataset": "flickr30k", "images": _images(flickr, False)})
    )
    return coco, flickr


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = train_sentencepiece(CAPTIONS * 5, tmp_path_factory.mktemp("spm") / "r", 40, hard_vocab_limit=False)
    return XLMRTokenizer(model)


def test_karpathy_items_per_caption(roots, tokenizer):
    coco, flickr = roots
    train = COCO.dataset("train", coco, tokenizer, 32)
    assert len(train) == 4 and train.images[1].image_path == "train2014/COCO_train2014_000000000501.jpg"
    test = FLICKR.dataset("test", flickr, tokenizer, 32)
    assert len(test) == 6 and test.images[0].image_path == "flickr30k-images/1000092799.jpg"
    assert [test[i]["image_index"] for i in range(6)] == [0, 0, 1, 1, 2, 2]  # running index within the split
    item = test[3]
    assert item["text"][0] == 0 and item["image"].shape == (3, 32, 32) and item["text_index"] == 3


def test_head_keys_and_logit_scale():
    model = COCO.build_model("beit3_tiny", **SMALL)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("beit3.")}
    assert head == {"language_head.weight": (DIM, DIM), "vision_head.weight": (DIM, DIM), "logit_scale": ()}
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert "beit3.encoder.layer_norm.A.weight" in model.state_dict()


def test_contrastive_loss_is_symmetric_and_matches_definition():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    loss, logits = contrastive_loss(image, text, scale)
    swapped, _ = contrastive_loss(text, image, scale)
    torch.testing.assert_close(loss, swapped)
    sim = scale.exp() * image @ text.T
    labels = torch.arange(5)
    torch.testing.assert_close(loss, (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2)
    torch.testing.assert_close(logits, sim)


def test_loss_backward_reaches_both_heads_and_scale(roots, tokenizer):
    torch.manual_seed(0)
    model = COCO.build_model("beit3_tiny", **SMALL)
    train = COCO.dataset("train", roots[0], tokenizer, 32)
    loss, metrics = COCO.loss(model, COCO.collate([train[i] for i in range(len(train))]))
    loss.backward()
    assert torch.isfinite(loss)
    for param in (model.vision_head.weight, model.language_head.weight, model.logit_scale):
        assert param.grad is not None and torch.isfinite(param.grad).all()


def test_predict_evaluate_and_score_json(roots, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = FLICKR.build_model("beit3_tiny", **SMALL).eval()
    test = FLICKR.dataset("test", roots[1], tokenizer, 32)
    records = FLICKR.predict(model, FLICKR.collate([test[i] for i in range(len(test))]))
    result = FLICKR.evaluate(records + records[:2], test)  # duplicates from padded samplers count once
    assert (result["num_images"], result["num_texts"]) == (3, 6)
    assert set(result) >= {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score"}
    # Features that match their own image perfectly give 100 everywhere.
    basis = torch.eye(3, 8)
    perfect = [
        {"image_index": r["image_index"], "text_index": r["text_index"]}
        | {"image_feat": basis[r["image_index"]], "text_feat": basis[r["image_index"]] * (1 - 0.01 * r["text_index"])}
        for r in records
    ]
    assert FLICKR.evaluate(perfect, test)["average_score"] == 100.0
    path = FLICKR.write_submission(perfect, tmp_path / "scores.json", test)
    assert json.loads(path.read_text())["tr_r1"] == 100.0


def test_evaluate_keeps_the_first_image_feature_seen():
    # Two captions per image; each caption's record carries its image's feature. The first record of every image
    # holds the right feature, the second a feature pointing at another image. Keeping the first gives 100
    # everywhere; keeping the last sends every image to the next image's captions, so TR@1 and IR@1 are 0.
    basis = torch.eye(3, 8)
    records = []
    for text_index, image_index in enumerate([0, 1, 2, 0, 1, 2]):
        image_feat = basis[image_index] if text_index < 3 else basis[(image_index + 1) % 3]
        records.append(
            {"image_index": image_index, "text_index": text_index}
            | {"image_feat": image_feat, "text_feat": basis[image_index] * (1 - 0.01 * text_index)}
        )
    result = FLICKR.evaluate(records)
    assert (result["tr_r1"], result["ir_r1"], result["average_score"]) == (100.0, 100.0, 100.0)
