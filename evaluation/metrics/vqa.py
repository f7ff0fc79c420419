"""VQAv2 accuracy (the official open-ended metric) and the soft-score targets used to train the VQA head.

Paper: Goyal et al., "Making the V in VQA Matter" (CVPR 2017); metric from Antol et al., "VQA: Visual Question
Answering" (ICCV 2015). Checked against GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
(commit c4e6a0e, the reference for local val scoring; test-dev / test-std are scored on EvalAI), and against
the soft-score function of microsoft/unilm `beit3/datasets.py` (`VQAv2Dataset.get_score`).

Accuracy of one question: the prediction is cleaned (newline/tab to space, strip), passed through punctuation
processing and then digit/article processing; for each of the (normally ten) human answers, that answer is left
out and the prediction scores min(1, #matching remaining answers / 3); the question's accuracy is the mean over
the leave-one-out subsets. Overall, per answer type and per question type accuracies are 100 x means, rounded
to two decimals like the official script.

Quirks of the official script reproduced on purpose (they change numbers, so "fixing" them would make results
incomparable with the leaderboard):

- Human answers get punctuation processing only, and only when they are not all identical; digit/article
  processing is applied to the prediction alone. So "two" predicted against ten "two" answers scores 0, while
  "two" against ten "2" answers scores 1.
- The period regex is written `(?!<=\\d)(\\.)(?!\\d)`: the first group is a look-ahead typo for a look-behind,
  so it deletes every period not followed by a digit ("5." -> "5", but "3.5" and ".5" stay).
- `re.UNICODE` is passed where `sub` expects `count`, so at most 32 periods are deleted per answer.
- The punctuation decision (delete vs. replace by a space) looks at the original text for every character,
  not at the text being rewritten.
- The contraction table contains capitalised keys ("Im", "Ive", ...) that can never match lower-cased words,
  and one reversed entry ("somebody'd" -> "somebodyd"); both are kept.
- Leave-one-out removes the answer dict equal to the current one; official answers carry distinct
  `answer_id`s, so this is positional removal, which is what this module does.
"""

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evaluation.metrics.ids import check_same_ids

# The 21 characters the official script treats as punctuation (period handled separately below).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# Typo kept from the official script: `(?!<=\d)` is a look-ahead, so only "not followed by a digit" is tested.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_MAX_PERIODS = 32  # the official call passes re.UNICODE (== 32) as the `count` argument of `sub`

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contraction typos of the official table (missing apostrophes -> canonical spelling). Entries that cannot
# match after lower-casing, and the reversed "somebody'd" entry, are part of the official table and stay.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# Soft target per number of annotators giving an answer; equals the official accuracy with ten answers.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def process_punctuation(text: str) -> str:
    """Applies the official punctuation rules (used for predictions and for non-unanimous human answers).

    A punctuation character is deleted when the text has it next to a space or contains a digit-comma-digit
    pattern ("1,000" -> "1000"), otherwise it becomes a space; then periods not followed by a digit go.
    """
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for char in _PUNCTUATION:
        # The test reads the original `text`, not `out`, exactly like the official script.
        if char + " " in text or " " + char in text or has_digit_comma:
            out = out.replace(char, "")
        else:
            out = out.replace(char, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Lower-cases, maps number words to digits, drops articles and expands contraction typos."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_prediction(answer: str) -> str:
    """Normalises a predicted answer the way the official evaluation does before matching."""
    cleaned = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(cleaned))


def question_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official accuracy of one prediction against the human answers of one question.

    Args:
        prediction: Raw predicted answer; normalised here.
        gt_answers: Raw human answers (ten in VQAv2), in annotation order.

    Returns:
        Mean over leave-one-out subsets of min(1, matches / 3), in [0, 1].
    """
    if not gt_answers:
        raise ValueError("question_accuracy needs at least one human answer")
    pred = normalize_prediction(prediction)
    # Unanimous answers are compared raw (official quirk, see module docstring).
    answers = list(gt_answers) if len(set(gt_answers)) == 1 else [process_punctuation(a) for a in gt_answers]
    num_matching = sum(answer == pred for answer in answers)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    total = sum(min(1.0, (num_matching - (answer == pred)) / 3.0) for answer in answers)
    return total / len(answers)


def vqa_accuracy(
    predictions: Mapping[int, str], annotations: Iterable[Mapping[str, Any]], *, decimals: int = 2
) -> dict[str, Any]:
    """Official VQA accuracy over a set of questions.

    Args:
        predictions: Question id -> raw predicted answer; must cover exactly the annotated questions.
        annotations: Entries of the official annotation file's `annotations` list (`question_id`, `answers`
            with `answer` fields, `answer_type`, `question_type`).
        decimals: Rounding of the percentages; 2 matches the official script.

    Returns:
        `overall`, `per_answer_type` and `per_question_type` in percent, and `num_questions`.

    Raises:
        ValueError: If the question sets differ or there is nothing to evaluate.
    """
    annotations = list(annotations)
    if not annotations:
        raise ValueError("no annotations to evaluate")
    check_same_ids({ann["question_id"] for ann in annotations}, set(predictions), what="question ids")
    per_question: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for ann in annotations:
        acc = question_accuracy(predictions[ann["question_id"]], [a["answer"] for a in ann["answers"]])
        per_question.append(acc)
        by_answer_type[ann["answer_type"]].append(acc)
        by_question_type[ann["question_type"]].append(acc)

    def percent(values: list[float]) -> float:
        return round(100.0 * sum(values) / len(values), decimals)

    return {
        "overall": percent(per_question),
        "per_answer_type": {key: percent(values) for key, values in sorted(by_answer_type.items())},
        "per_question_type": {key: percent(values) for key, values in sorted(by_question_type.items())},
        "num_questions": len(per_question),
    }


def answer_soft_score(num_annotators: int) -> float:
    """Training target of an answer given by `num_annotators` of the ten humans: 0/0.3/0.6/0.9/1.0 for 0-3/>=4."""
    if num_annotators < 0:
        raise ValueError(f"num_annotators must be >= 0, got {num_annotators}")
    return _SOFT_SCORES[num_annotators] if num_annotators < len(_SOFT_SCORES) else 1.0


def soft_targets(answers: Sequence[str]) -> dict[str, float]:
    """Soft-score target of every distinct raw human answer of one question (BEiT-3 counts raw strings).

    Args:
        answers: The raw human answers of the question.

    Returns:
        Answer -> soft score; answers outside the model's vocabulary are dropped by the caller.
    """
    return {answer: answer_soft_score(count) for answer, count in Counter(answers).items()}
