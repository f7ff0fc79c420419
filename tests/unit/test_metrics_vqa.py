"""VQAv2 accuracy: answer normalisation, leave-one-out accuracy, aggregation, quirks and soft-score targets."""

import pytest

from evaluation.metrics.vqa import (
    answer_soft_score,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    soft_targets,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not replaced by a space
        ("hello, world", "hello world"),  # "," next to a space: deleted
        ("black-and-white", "black and white"),  # isolated "-": becomes a space
        ("(red)", " red "),
        ("yes.", "yes"),
        ("5.", "5"),  # period-regex typo: a period after a digit still goes
        ("3.5", "3.5"),  # kept: followed by a digit
        ("don't", "don't"),  # the apostrophe is not in the official punctuation list
    ],
)
def test_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


def test_process_punctuation_deletes_at_most_32_periods() -> None:
    # The official script passes re.UNICODE (32) as `count`: 40 periods in, 8 left.
    assert process_punctuation("a." * 40).count(".") == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two dogs", "2 dogs"),
        ("an apple", "apple"),
        ("none", "0"),
        ("ten", "10"),
        ("dont know", "don't know"),
        ("Im here", "im here"),  # capitalised table key never matches after lower-casing
    ],
)
def test_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


def test_normalize_prediction_cleans_whitespace_then_punctuation_then_words() -> None:
    assert normalize_prediction("\tThe broccoli!\n") == "broccoli"
    assert normalize_prediction("A dog.") == "dog"


@pytest.mark.parametrize(
    ("gt_answers", "prediction", "expected"),
    [
        # Pinned cases of the spec (section 7e), which describes the 2017 revision of the official script.
        (["2"] * 10, "two", 1.0),  # prediction normalised to "2"; unanimous GT compared raw
        (["two"] * 10, "two", 0.0),  # 2017 quirk: GT digits are never normalised
        (["yes"] * 3 + ["no"] * 7, "Yes.", 0.9),
        (["dog"] + ["cat"] * 9, "a dog", 0.3),
        (["1,000"] * 4 + ["900"] * 6, "1000", 1.0),  # non-unanimous GT gets punctuation processing
        (["yes"] * 2 + ["no"] * 8, "yes", 0.6),
        (["yes."] * 10, "yes", 0.0),  # unanimous GT keeps its period
        (["don't"] * 3 + ["no"] * 7, "dont", 0.9),  # contraction table
        (["red"] * 10, "blue", 0.0),
    ],
)
def test_question_accuracy_2017_pinned_cases(gt_answers: list[str], prediction: str, expected: float) -> None:
    assert question_accuracy(prediction, gt_answers, revision="2017") == pytest.approx(expected)


# The one-question cases of the two revisions, worked by hand from the two versions of vqaEval.py.
# (prediction, human answers, 2017 accuracy, current accuracy), in percent.
REVISION_CASES = [
    # 2017: GT "the dog" keeps its article, 2 of 10 match -> 60. Current: GT disagrees, so "the dog" -> "dog".
    ("dog", ["the dog"] * 8 + ["dog"] * 2, 60.0, 100.0),
    # 2017: the prediction's "_" becomes a space, GT unanimous stays raw -> 0. Current: nothing is processed.
    ("ice_cream", ["ice_cream"] * 10, 0.0, 100.0),
    # 2017: GT number words are not mapped -> 0. Current: GT disagrees, "two" -> "2": 5 of 10 match -> 100.
    ("2", ["two"] * 5 + ["three"] * 5, 0.0, 100.0),
    # 2017: prediction "two" -> "2" matches ten raw "2". Current: unanimous GT, raw "two" != "2".
    ("two", ["2"] * 10, 100.0, 0.0),
    # 2017: GT is never lower-cased -> 0. Current: 9 x "Yes" -> "yes" -> 100.
    ("yes", ["Yes"] * 9 + ["no"], 0.0, 100.0),
]


@pytest.mark.parametrize(("prediction", "gt_answers", "old", "current"), REVISION_CASES)
def test_question_accuracy_revisions(prediction: str, gt_answers: list[str], old: float, current: float) -> None:
    records = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(gt_answers)]
    assert 100 * question_accuracy(prediction, records, revision="2017") == pytest.approx(old)
    assert 100 * question_accuracy(prediction, records, revision="2021") == pytest.approx(current)
    assert question_accuracy(prediction, records) == question_accuracy(prediction, records, revision="2021")
    assert question_accuracy(prediction, gt_answers) == question_accuracy(prediction, records)


def test_question_accuracy_without_answer_ids_leaves_out_every_equal_answer() -> None:
    # The official leave-one-out drops every answer dict equal to the held-out one. Without ids, holding out a
    # "yes" drops all three: 0 matches left (3 subsets); holding out a "no" leaves 3 "yes" -> 1 (7 subsets).
    # (3 * 0 + 7 * 1) / 10 = 0.7 in both revisions; positional removal would give (3 * 2/3 + 7) / 10 = 0.9.
    records = [{"answer": "yes"}] * 3 + [{"answer": "no"}] * 7
    for revision in ("2017", "2021"):
        assert question_accuracy("yes", records, revision=revision) == pytest.approx(0.7)
    with_ids = [r | {"answer_id": i} for i, r in enumerate(records)]
    assert question_accuracy("yes", with_ids) == pytest.approx(0.9)
    # Records differing in another field are different dicts: only the held-out one goes.
    assert question_accuracy("yes", [{"answer": "yes", "answer_confidence": c} for c in ("yes", "no", "maybe")]
                             + [{"answer": "no"}] * 7) == pytest.approx(0.9)  # fmt: skip


def test_question_accuracy_rejects_unknown_revision() -> None:
    with pytest.raises(ValueError, match="unknown vqaEval revision '2019'"):
        question_accuracy("yes", ["yes"], revision="2019")


def test_question_accuracy_two_of_ten_by_hand() -> None:
    # 2 of 10 annotators said "yes". Leaving out one of the two "yes" answers leaves 1 match -> 1/3 (2 subsets);
    # leaving out one of the eight "no" answers leaves 2 matches -> 2/3 (8 subsets).
    # Mean = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6.
    answers = ["no", "yes", "no", "no", "no", "yes", "no", "no", "no", "no"]
    assert question_accuracy("yes", answers) == pytest.approx(0.6)
    # 3 of 10: 3 subsets keep 2 matches (2/3), 7 keep 3 (capped at 1): (3 * 2/3 + 7) / 10 = 0.9.
    assert question_accuracy("no", ["no"] * 3 + ["maybe"] * 7) == pytest.approx(0.9)


def test_question_accuracy_rejects_empty_answers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        question_accuracy("yes", [])


def _annotation(question_id: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": question_id,
        "image_id": question_id // 1000,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


ANNOTATIONS = [
    _annotation(9000, ["2"] * 10, "number", "how many"),
    _annotation(42000, ["yes"] * 3 + ["no"] * 7, "yes/no", "is this a"),
    _annotation(42001, ["broccoli"] * 2 + ["rice"] * 8, "other", "what is"),
]


def test_vqa_accuracy_overall_and_per_type() -> None:
    predictions = {9000: "two", 42000: "Yes.", 42001: "The broccoli!"}
    # 2017: 1.0 ("two" -> "2" against ten raw "2"), 0.9, 0.6.
    result = vqa_accuracy(predictions, ANNOTATIONS, revision="2017")
    assert result["overall"] == 83.33  # 100 * 2.5 / 3, rounded to 2 decimals like the official script
    assert result["per_answer_type"] == {"number": 100.0, "other": 60.0, "yes/no": 90.0}
    assert result["per_question_type"] == {"how many": 100.0, "is this a": 90.0, "what is": 60.0}
    assert result["num_questions"] == 3 and result["vqa_eval_revision"] == "2017"
    # Current: unanimous "2" is compared with the raw "two" -> 0.0; the other two are normalised as before.
    current = vqa_accuracy(predictions, ANNOTATIONS)
    assert current["overall"] == 50.0 and current["vqa_eval_revision"] == "2021"
    assert current["per_answer_type"] == {"number": 0.0, "other": 60.0, "yes/no": 90.0}


def test_vqa_accuracy_perfect_and_all_wrong() -> None:
    assert vqa_accuracy({9000: "2", 42000: "no", 42001: "rice"}, ANNOTATIONS)["overall"] == 100.0
    assert vqa_accuracy({9000: "blue", 42000: "blue", 42001: "blue"}, ANNOTATIONS)["overall"] == 0.0


def test_vqa_accuracy_names_missing_and_unknown_questions() -> None:
    with pytest.raises(ValueError, match=r"1 question ids without a prediction \(e.g. 42001\).*1 predicted"):
        vqa_accuracy({9000: "2", 42000: "no", 7: "rice"}, ANNOTATIONS)
    with pytest.raises(ValueError, match="no annotations"):
        vqa_accuracy({}, [])


def test_soft_targets_spec_case() -> None:
    answers = ["yes"] * 4 + ["no"] * 3 + ["maybe"] * 3
    assert soft_targets(answers) == {"yes": 1.0, "no": 0.9, "maybe": 0.9}


def test_answer_soft_score_table() -> None:
    assert [answer_soft_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        answer_soft_score(-1)


@pytest.mark.parametrize("num_matching", range(1, 11))
def test_soft_score_equals_official_accuracy_with_ten_answers(num_matching: int) -> None:
    # The training target table is the closed form of the leave-one-out accuracy for ten answers.
    answers = ["cat"] * num_matching + ["dog"] * (10 - num_matching)
    for revision in ("2017", "2021"):
        assert question_accuracy("cat", answers, revision=revision) == pytest.approx(answer_soft_score(num_matching))
