"""VQAv2 accuracy (the official open-ended metric) and the soft-score targets used to train the VQA head.

Paper: Goyal et al., "Making the V in VQA Matter" (CVPR 2017); metric from Antol et al., "VQA: Visual Question
Answering" (ICCV 2015). Checked against GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
(the reference for local val scoring; test-dev / test-std are scored on EvalAI), and against the soft-score
function of microsoft/unilm `beit3/datasets.py` (`VQAv2Dataset.get_score`).

Two revisions of the official script exist and can give numbers many points apart on the same file;
`revision` picks one, and every result names the one it followed:

- "2021" (default, the current script): commit a013f00 "Fixed processing answers bug" (2021-03-11). The
  prediction and the human answers are cleaned (newline/tab to space, strip). When the cleaned human answers
  are not all identical, both the human answers and the prediction get punctuation processing and then
  digit/article processing; when they are unanimous, nothing is normalised and the raw (cleaned) strings are
  compared. So "two" against ten "2" scores 0, "2" against 5 x "two" + 5 x "three" scores 1.
- "2017": the script as released with VQA v2.0 (commit a4f1afd, 2017-10-02; its evaluation code last changed
  in 458a8b2, 2016-10-08; the Python 3 port c4e6a0e has the same logic). The prediction is cleaned, then gets
  punctuation and digit/article processing; the human answers are not cleaned and get punctuation processing
  only, and only when they are not all identical. So "two" against ten "2" scores 1, and "yes" against
  9 x "Yes" + "no" scores 0. Kept for comparing with papers scored by it.

Accuracy of one question (both revisions): for each human answer, that answer is left out and the prediction
scores min(1, #matching remaining answers / 3); the question's accuracy is the mean over the leave-one-out
subsets. "Left out" follows the official code exactly: it removes every answer record *equal* to the held-out
one (`item != gtAnsDatum` on the answer dicts, whose "answer" field holds the processed text). Official files
give each answer a distinct `answer_id`, so this is removal of that one answer; without `answer_id`, all equal
records go (3 x "yes" + 7 x "no" predicted "yes" scores 0.7, not 0.9). Plain strings passed to
`question_accuracy` stand for records with distinct ids. Overall, per answer type and per question type
accuracies are 100 x means, rounded to two decimals like the official script.

Quirks of the official script reproduced on purpose (they change numbers, so "fixing" them would make results
incomparable with the leaderboard):

- The period regex is written `(?!<=\\d)(\\.)(?!\\d)`: the first group is a look-ahead typo for a look-behind,
  so it deletes every period not followed by a digit ("5." -> "5", but "3.5" and ".5" stay).
- `re.UNICODE` is passed where `sub` expects `count`, so at most 32 periods are deleted per answer.
- The punctuation decision (delete vs. replace by a space) looks at the original text for every character,
  not at the text being rewritten.
- The contraction table contains capitalised keys ("Im", "Ive", ...) that can never match lower-cased words,
  and one reversed entry ("somebody'd" -> "somebodyd"); both are kept.
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

# Revisions of GT-Vision-Lab/VQA `vqaEval.py` that `revision` can name (module docstring).
VQA_EVAL_REVISIONS = {
    "2021": "a013f00 'Fixed processing answers bug' (2021-03-11), the current official script",
    "2017": "a4f1afd, v2.0 release (2017-10-02), evaluation code of 458a8b2",
}
DEFAULT_VQA_EVAL_REVISION = "2021"

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


def clean_answer(answer: str) -> str:
    """Newlines and tabs to spaces, then strip: the cleaning the official script applies before anything else."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_prediction(answer: str) -> str:
    """Cleans, then applies punctuation and digit/article processing (what both revisions do when normalising)."""
    return process_digit_article(process_punctuation(clean_answer(answer)))


def check_revision(revision: str) -> None:
    """Raises a ValueError naming the known revisions when `revision` is not one of them."""
    if revision not in VQA_EVAL_REVISIONS:
        raise ValueError(f"unknown vqaEval revision {revision!r}; expected one of {', '.join(VQA_EVAL_REVISIONS)}")


def question_accuracy(
    prediction: str, gt_answers: Sequence[str | Mapping[str, Any]], *, revision: str = DEFAULT_VQA_EVAL_REVISION
) -> float:
    """Official accuracy of one prediction against the human answers of one question.

    Args:
        prediction: Raw predicted answer; normalised here as the revision says.
        gt_answers: The human answers (ten in VQAv2) in annotation order: answer records as in the annotation
            file (dicts with an "answer" field, compared whole for the leave-one-out rule), or plain strings,
            which stand for records with distinct `answer_id`s.
        revision: "2021" (current official script) or "2017" (module docstring).

    Returns:
        Mean over leave-one-out subsets of min(1, matches / 3), in [0, 1].
    """
    check_revision(revision)
    if not gt_answers:
        raise ValueError("question_accuracy needs at least one human answer")
    raw = [a["answer"] if isinstance(a, Mapping) else a for a in gt_answers]
    if revision == "2021":
        pred, answers = clean_answer(prediction), [clean_answer(a) for a in raw]
        if len(set(answers)) > 1:
            pred = process_digit_article(process_punctuation(pred))
            answers = [process_digit_article(process_punctuation(a)) for a in answers]
    else:
        pred, answers = normalize_prediction(prediction), list(raw)
        if len(set(answers)) > 1:
            answers = [process_punctuation(a) for a in answers]
    num_matching = sum(answer == pred for answer in answers)
    total = 0.0
    for i, answer in enumerate(answers):
        # Leaving out record i removes every record equal to it; they all match exactly when record i does.
        left_out = _num_equal_records(gt_answers, answers, i) if answer == pred else 0
        total += min(1.0, (num_matching - left_out) / 3.0)
    return total / len(answers)


def _num_equal_records(records: Sequence[str | Mapping[str, Any]], answers: list[str], index: int) -> int:
    """How many records equal record `index` once their answers are processed (the official dict comparison)."""
    if not isinstance(records[index], Mapping):
        return 1
    processed = {**records[index], "answer": answers[index]}
    return sum(
        isinstance(record, Mapping) and {**record, "answer": answer} == processed
        for record, answer in zip(records, answers, strict=True)
    )


def vqa_accuracy(
    predictions: Mapping[int, str],
    annotations: Iterable[Mapping[str, Any]],
    *,
    decimals: int = 2,
    revision: str = DEFAULT_VQA_EVAL_REVISION,
) -> dict[str, Any]:
    """Official VQA accuracy over a set of questions.

    Args:
        predictions: Question id -> raw predicted answer; must cover exactly the annotated questions.
        annotations: Entries of the official annotation file's `annotations` list (`question_id`, `answers`
            with `answer` fields, `answer_type`, `question_type`).
        decimals: Rounding of the percentages; 2 matches the official script.
        revision: Revision of the official script to follow, "2021" (current) or "2017".

    Returns:
        `overall`, `per_answer_type` and `per_question_type` in percent, `num_questions`, and
        `vqa_eval_revision` (the revision followed).

    Raises:
        ValueError: If the question sets differ, there is nothing to evaluate, or the revision is unknown.
    """
    check_revision(revision)
    annotations = list(annotations)
    if not annotations:
        raise ValueError("no annotations to evaluate")
    check_same_ids({ann["question_id"] for ann in annotations}, set(predictions), what="question ids")
    per_question: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for ann in annotations:
        acc = question_accuracy(predictions[ann["question_id"]], ann["answers"], revision=revision)
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
        "vqa_eval_revision": revision,
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
