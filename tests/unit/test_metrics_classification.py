"""Top-k accuracy (ImageNet) and NLVR2 accuracy / consistency on hand-made inputs."""

import pytest
import torch

from evaluation.metrics.classification import nlvr2_scores, ranked_accuracy, sentence_group, topk_accuracy

# Six examples over six classes (spec 3f: >= 6 classes so top-5 is not trivially 100%).
LABELS = torch.tensor([0, 1, 2, 3, 4, 5])
LOGITS = torch.tensor(
    [
        [9.0, 1.0, 2.0, 3.0, 4.0, 0.0],  # top-1 right
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],  # top-1 right
        [0.0, 1.0, 9.0, 2.0, 3.0, 4.0],  # top-1 right
        [0.0, 1.0, 2.0, 9.0, 3.0, 4.0],  # top-1 right
        [9.0, 8.0, 0.0, 1.0, 5.0, 2.0],  # label 4 ranks 3rd: top-5 only
        [9.0, 8.0, 7.0, 6.0, 1.0, 0.0],  # label 5 ranks last: wrong even at top-5
    ]
)


def test_topk_accuracy_hand_made() -> None:
    metrics = topk_accuracy(LOGITS, LABELS, ks=(1, 5))
    assert metrics["acc1"] == pytest.approx(100 * 4 / 6)
    assert metrics["acc5"] == pytest.approx(100 * 5 / 6)
    assert topk_accuracy(LOGITS, LABELS, ks=(6,))["acc6"] == 100.0


def test_topk_accuracy_perfect_and_all_wrong() -> None:
    assert topk_accuracy(torch.eye(6), LABELS, ks=(1,)) == {"acc1": 100.0}
    assert topk_accuracy(-torch.eye(6), LABELS, ks=(1,)) == {"acc1": 0.0}


def test_topk_accuracy_rejects_k_beyond_classes() -> None:
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        topk_accuracy(LOGITS, LABELS, ks=(1, 7))


def test_ranked_accuracy() -> None:
    labels = {"a": 1, "b": 2, "c": 3}
    predictions = {"a": [1, 0], "b": [0, 2], "c": [0, 1]}
    metrics = ranked_accuracy(predictions, labels, ks=(1, 2))
    assert metrics == pytest.approx({"acc1": 100 / 3, "acc2": 200 / 3})
    with pytest.raises(ValueError, match="fewer than 3"):
        ranked_accuracy(predictions, labels, ks=(3,))
    with pytest.raises(ValueError, match="without a prediction"):
        ranked_accuracy({"a": [1]}, labels)


def test_nlvr2_accuracy_and_consistency() -> None:
    # Two sentences (dev-850-*-0 and dev-851-*-1), each paired with two image pairs.
    labels = {"dev-850-0-0": True, "dev-850-1-0": False, "dev-851-0-1": True, "dev-851-1-1": True}
    predictions = {"dev-850-0-0": True, "dev-850-1-0": True, "dev-851-0-1": True, "dev-851-1-1": True}
    # 3/4 correct; sentence 0 has a wrong pair, sentence 1 is fully right: consistency 1/2.
    assert nlvr2_scores(predictions, labels) == {
        "accuracy": 75.0,
        "consistency": 50.0,
        "num_examples": 4,
        "num_sentences": 2,
    }
    assert nlvr2_scores(labels, labels)["consistency"] == 100.0
    flipped = {key: not value for key, value in labels.items()}
    assert nlvr2_scores(flipped, labels)["accuracy"] == 0.0


def test_sentence_group_blanks_the_pair_id() -> None:
    assert sentence_group("test1-12-3-1") == "test1-12--1"
    with pytest.raises(ValueError, match="split-setid-pairid-sentenceid"):
        sentence_group("dev-850")
