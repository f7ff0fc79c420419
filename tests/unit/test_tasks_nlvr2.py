"""Tests for the NLVR2 task on a hand-made fixture in the lil-lab/nlvr format."""

import io
import json

import pytest
import torch
from PIL import Image
from support.model_inputs import SMALL

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.score import score_files
from evaluation.tasks import get_task

TASK = get_task("nlvr2")
DIM = SMALL["embed_dim"]
SENTENCES = ["There are two dogs.", "The left image shows a cat.", "One image has a red ball."]


def _line(identifier, sentence, label, **extra):
    return {
        "identifier": identifier,
        "sentence": sentence,
        "label": label,
        "left_url": "http://x/left.jpg",
        "right_url": "http://x/right.jpg",
        "writer": "w1",
        "synset": "dog",
        "query": "dogs",
        "validation": {"w2": label},
        **extra,
    }


def _png(path, color, as_jpeg=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (36, 30), color).save(buffer, format="JPEG" if as_jpeg else "PNG")
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlvr")
    data = root / "nlvr2" / "data"
    data.mkdir(parents=True)
    train = [_line(f"train-{i}-0-0", SENTENCES[i], ["True", "False"][i % 2], directory=i + 1) for i in range(3)]
    # The same sentence on two pairs (pair ids 0 and 1) forms one consistency group.
    dev = [
        _line("dev-850-0-0", SENTENCES[0], "True", extra_validations={}),
        _line("dev-850-1-0", SENTENCES[0], "False", extra_validations={}),
        _line("dev-851-0-1", SENTENCES[1], "True", extra_validations={}),
        _line("dev-851-1-1", SENTENCES[1], "True", extra_validations={}),
    ]
    test = [_line("test1-3-0-0", SENTENCES[2], "False", extra_validations={})]
    for name, lines in (("train", train), ("dev", dev), ("test1", test)):
        (data / f"{name}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for i, line in enumerate(train):
        stem = line["identifier"].rsplit("-", 1)[0]
        for side in (0, 1):
            _png(root / "images" / "train" / str(i + 1) / f"{stem}-img{side}.png", (50 * i, 20 * side, 90))
    for folder, lines in (("dev", dev), ("test1", test)):
        for j, line in enumerate(lines):
            stem = line["identifier"].rsplit("-", 1)[0]
            for side in (0, 1):
                _png(root / folder / f"{stem}-img{side}.png", (30 * j, 200 * side, 10), as_jpeg=(j, side) == (0, 1))
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = train_sentencepiece(SENTENCES * 5, tmp_path_factory.mktemp("spm") / "s", 40, hard_vocab_limit=False)
    return XLMRTokenizer(model)


def test_index_paths_and_labels(root, tokenizer):
    train = TASK.dataset("train", root, tokenizer, 32)
    assert train.items[1]["image_path"] == "images/train/2/train-1-0-img0.png"
    assert train.items[1]["image2_path"] == "images/train/2/train-1-0-img1.png"
    assert [item["label"] for item in train.items] == [True, False, True]
    dev = TASK.dataset("val", root, tokenizer, 32)
    assert dev.items[1]["image_path"] == "dev/dev-850-1-img0.png"
    assert TASK.dataset("test", root, tokenizer, 32).items[0]["image2_path"] == "test1/test1-3-0-img1.png"
    item = dev[0]  # one of its ".png" files holds JPEG bytes
    assert item["image"].shape == item["image2"].shape == (3, 32, 32) and item["label"] == 1


def test_head_keys_and_init():
    model = TASK.build_model("beit3_tiny", **SMALL)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("beit3.")}
    assert head == {
        "head.norm1.weight": (4 * DIM,),
        "head.norm1.bias": (4 * DIM,),
        "head.dense1.weight": (2 * DIM, 4 * DIM),
        "head.dense1.bias": (2 * DIM,),
        "head.norm2.weight": (2 * DIM,),
        "head.norm2.bias": (2 * DIM,),
        "head.dense2.weight": (2, 2 * DIM),
        "head.dense2.bias": (2,),
    }
    assert "beit3.encoder.layer_norm.A.weight" in model.state_dict()  # normalize_output=True
    assert model.head.dense1.weight.abs().max() <= 0.02 * 1e-3 + 1e-12


def test_head_init_scale_is_a_head_option():
    """The release's 0.001 by default; `head_init_scale` (model.head_options) scales the same draw."""
    torch.manual_seed(0)
    released = TASK.build_model("beit3_tiny", **SMALL).head.dense1.weight
    torch.manual_seed(0)
    plain = TASK.build_model("beit3_tiny", head_init_scale=1.0, **SMALL).head.dense1.weight
    assert plain.abs().max() > 0.015 and torch.allclose(released, plain * 1e-3)  # one-sigma truncated, std 0.02


def test_pair_forward_is_per_example(root, tokenizer):
    torch.manual_seed(0)
    model = TASK.build_model("beit3_tiny", **SMALL).eval()
    dev = TASK.dataset("val", root, tokenizer, 32)
    batch = TASK.collate([dev[i] for i in range(4)])
    with torch.no_grad():
        full = model(batch["image"], batch["image2"], batch["text"], batch["text_padding_mask"])
        one = model(batch["image"][2:3], batch["image2"][2:3], batch["text"][2:3], batch["text_padding_mask"][2:3])
    torch.testing.assert_close(full[2:3], one, atol=1e-5, rtol=1e-4)


def test_loss_predict_evaluate_submission(root, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = TASK.build_model("beit3_tiny", **SMALL)
    train = TASK.dataset("train", root, tokenizer, 32)
    loss, _ = TASK.loss(model, TASK.collate([train[i] for i in range(3)]))
    loss.backward()
    assert torch.isfinite(loss) and model.head.dense2.weight.grad is not None
    dev = TASK.dataset("val", root, tokenizer, 32)
    records = TASK.predict(model.eval(), TASK.collate([dev[i] for i in range(4)]))
    result = TASK.evaluate(records, dev)
    assert result["num_examples"] == 4 and result["num_sentences"] == 2
    # A hand-made prediction file: 3/4 correct, one of the two sentences fully correct.
    records = [{"identifier": i, "prediction": p} for i, p in zip(dev.labels, [True, True, True, True], strict=True)]
    assert TASK.evaluate(records, dev)["accuracy"] == 75.0
    path = TASK.write_submission(records, tmp_path / "pred.csv", dev)
    assert path.read_text().splitlines()[0] == "dev-850-0-0,True"
    scored = score_files("nlvr2", path, root / "nlvr2" / "data" / "dev.json")
    assert (scored["accuracy"], scored["consistency"]) == (75.0, 50.0)
