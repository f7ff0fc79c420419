"""Tests for the VQAv2 task on a hand-made fixture in the official question/annotation format."""

import json

import pytest
import torch
from PIL import Image
from support.model_inputs import SMALL

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.score import score_files
from evaluation.tasks import get_task
from evaluation.tasks.vqav2 import answer_vocabulary, normalize_answer

TASK = get_task("vqav2")
DIM = SMALL["embed_dim"]
QUESTIONS = ["How many dogs are there?", "What animal is this?", "Is it sunny?", "What color is the cat?"]


def _answers(*pairs):
    raw = [answer for answer, count in pairs for _ in range(count)]
    assert len(raw) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(raw)]


def _ann(qid, image_id, mc, answers, answer_type="other", question_type="what"):
    return {
        "question_id": qid,
        "image_id": image_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": mc,
        "answers": answers,
    }


def _write(root, subtype, questions, annotations=None):
    top = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco"}
    qs = [{"image_id": i, "question": q, "question_id": qid} for qid, i, q in questions]
    (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
        json.dumps(top | {"task_type": "Open-Ended", "questions": qs})
    )
    if annotations is not None:
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(top | {"annotations": annotations}))
    folder = "test2015" if subtype.startswith("test") else subtype
    for _, image_id, _ in questions:
        (root / folder).mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (image_id * 20 % 255, 80, 120)).save(
            root / folder / f"COCO_{folder}_{image_id:012d}.jpg"
        )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    _write(
        root,
        "train2014",
        [(90, 9, QUESTIONS[0]), (91, 9, QUESTIONS[1]), (92, 9, QUESTIONS[2])],
        [
            _ann(90, 9, "Two", _answers(("two", 4), ("2", 3), ("3", 3)), "number", "how many"),
            _ann(91, 9, "a dog", _answers(("dog", 6), ("a dog", 4))),
            # Every raw answer is out of vocabulary ("yes." is never normalised on the GT side): dropped.
            _ann(92, 9, "Yes.", _answers(("Yes.", 10)), "yes/no", "is it"),
        ],
    )
    _write(
        root,
        "val2014",
        [(420, 42, QUESTIONS[3]), (421, 42, QUESTIONS[2]), (730, 73, QUESTIONS[0])],
        [
            _ann(420, 42, "1,000", _answers(("1,000", 4), ("900", 6)), "number", "how many"),
            _ann(421, 42, "yes", _answers(("yes", 4), ("no", 3), ("maybe", 3)), "yes/no", "is it"),
            _ann(730, 73, "2", _answers(("2", 10)), "number", "how many"),
        ],
    )
    _write(root, "test2015", [(10, 1, QUESTIONS[1])])
    _write(root, "test-dev2015", [(11, 1, QUESTIONS[2])])
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = train_sentencepiece(QUESTIONS * 5, tmp_path_factory.mktemp("spm") / "q", 40, hard_vocab_limit=False)
    return XLMRTokenizer(model)


def test_normalize_answer_official_rules():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("a dog") == "dog"
    assert normalize_answer("Yes.") == "yes"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("dont") == "don't"


def test_answer_vocabulary_first_seen_order_and_threshold(root):
    assert answer_vocabulary(root, min_answer_count=1) == ["2", "dog", "yes", "1000"]
    assert answer_vocabulary(root, min_answer_count=2) == ["2", "yes"]
    assert answer_vocabulary(root) == []  # the released threshold of 9 empties a tiny fixture


def test_splits_targets_and_dropping(root, tokenizer):
    options = dict(min_answer_count=1, rest_val_images=1, seed=0)
    train = TASK.dataset("train", root, tokenizer, 32, **options)
    val = TASK.dataset("val", root, tokenizer, 32, **options)
    train_qids = [item["qid"] for item in train.items]
    val_qids = [item["qid"] for item in val.items]
    assert 92 not in train_qids and {90, 91} <= set(train_qids)  # no in-vocabulary answer -> dropped
    assert sorted(train_qids + val_qids) == [90, 91, 420, 421, 730]  # one val image held out, one trained on
    by_qid = {item["qid"]: item["scores"] for item in train.items + val.items}
    labels = {a: i for i, a in enumerate(train.answers)}
    assert by_qid[91] == {labels["dog"]: 1.0}  # raw "a dog" is not in the normalised vocabulary
    assert by_qid[90] == {labels["2"]: 0.9}  # raw "two" does not count
    # Soft scores of raw answers yes x4, no x3, maybe x3: only "yes" is in the vocabulary.
    assert by_qid[421] == {labels["yes"]: 1.0}
    item = val[0]
    assert item["targets"].shape == (4,) and item["text"][0] == 0 and item["image"].shape == (3, 32, 32)
    assert len(TASK.dataset("test", root, tokenizer, 32, **options)) == 1
    assert len(TASK.dataset("test-dev", root, tokenizer, 32, **options)) == 1


def test_head_keys_match_release():
    model = TASK.build_model("beit3_tiny", num_answers=4, **SMALL)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("beit3.")}
    assert head == {
        "pooler.norm.weight": (DIM,),
        "pooler.norm.bias": (DIM,),
        "pooler.dense.weight": (DIM, DIM),
        "pooler.dense.bias": (DIM,),
        "head.0.weight": (2 * DIM, DIM),
        "head.0.bias": (2 * DIM,),
        "head.1.weight": (2 * DIM,),
        "head.1.bias": (2 * DIM,),
        "head.3.weight": (4, 2 * DIM),
        "head.3.bias": (4,),
    }
    assert not any(k.startswith("beit3.encoder.layer_norm") for k in model.state_dict())


def test_loss_predict_evaluate_submission(root, tokenizer, tmp_path):
    torch.manual_seed(0)
    options = dict(min_answer_count=1, rest_val_images=2, seed=0)
    val = TASK.dataset("val", root, tokenizer, 32, **options)
    model = TASK.build_model("beit3_tiny", num_answers=len(val.answers), **SMALL)
    batch = TASK.collate([val[i] for i in range(len(val))])
    loss, metrics = TASK.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.head[3].weight.grad is not None
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        model(batch["image"], batch["text"], batch["text_padding_mask"]), batch["targets"], reduction="sum"
    ) / len(val)
    torch.testing.assert_close(loss, manual)
    records = TASK.predict(model.eval(), batch)
    result = TASK.evaluate(records, val)
    assert result["num_questions"] == 3 and 0 <= result["score"] <= 100
    path = TASK.write_submission(records, tmp_path / "vqa.json", val)
    submission = json.loads(path.read_text())
    assert {s["question_id"] for s in submission} == {420, 421, 730}
    assert all(s["answer"] in val.answers for s in submission)
    scored = score_files("vqav2", path, root / "v2_mscoco_val2014_annotations.json")
    assert scored["overall"] == result["overall"]
