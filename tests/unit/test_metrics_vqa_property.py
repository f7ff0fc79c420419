"""VQA accuracy on random annotations against a re-statement of the official rules written here.

The re-statement follows the published description of GT-Vision-Lab/VQA `vqaEval.py` (current revision,
a013f00 "Fixed processing answers bug", and the 2017 release) step by step, without calling project code:
clean both sides; when the ten answers disagree normalise (2021: answers and prediction, punctuation then
digits/articles; 2017: prediction fully, answers punctuation only); for each answer dict, drop every dict equal
to it and score min(1, matches / 3); average. Words are drawn from a small vocabulary whose contraction-table
entries are listed below, so the full table is not needed.
"""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.metrics.vqa import question_accuracy, vqa_accuracy

PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
NUMBERS = dict(zip("none zero one two three four five six seven eight nine ten".split(),
                   "0 0 1 2 3 4 5 6 7 8 9 10".split(), strict=True))  # fmt: skip
CONTRACTIONS = {"dont": "don't", "cant": "can't", "whats": "what's", "Im": "I'm"}  # Im never matches (lower-cased)
WORDS = ["yes", "Yes", "no", "NO", "two", "2", "Two", "the", "A", "an", "dog", "dogs", "dont", "don't", "Im",
         "cant", "whats", "none", "0", "1,000", "1000", "3.5", "5.", "ice_cream", "red-ish", "(red)", "yes.", "a.b",
         "?", "! ", "cat,", ",", ".", "..", "x;y", "ten", "10", "the dog"]  # fmt: skip


def ref_punctuation(text: str) -> str:
    has_digit_comma = re.search(r"[0-9],[0-9]", text) is not None
    out = text
    for char in PUNCTUATION:
        delete = has_digit_comma or f"{char} " in text or f" {char}" in text
        out = out.replace(char, "" if delete else " ")
    # Periods not followed by a digit are deleted, but only the first 32 such periods (re.UNICODE as `count`).
    kept, removed = [], 0
    for i, char in enumerate(out):
        followed_by_digit = i + 1 < len(out) and out[i + 1] in "0123456789"
        if char == "." and not followed_by_digit and removed < 32:
            removed += 1
            continue
        kept.append(char)
    return "".join(kept)


def ref_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBERS.get(word, word)
        if word not in ("a", "an", "the"):
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def ref_clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def ref_accuracy(prediction: str, answer_dicts: list[dict], revision: str) -> float:
    gts = [dict(d) for d in answer_dicts]  # the official script edits these in place
    if revision == "2021":
        for d in gts:
            d["answer"] = ref_clean(d["answer"])
        pred = ref_clean(prediction)
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = ref_digits_articles(ref_punctuation(d["answer"]))
            pred = ref_digits_articles(ref_punctuation(pred))
    else:
        pred = ref_digits_articles(ref_punctuation(ref_clean(prediction)))
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = ref_punctuation(d["answer"])
    scores = []
    for held_out in gts:
        others = [d for d in gts if d != held_out]
        scores.append(min(1, len([d for d in others if d["answer"] == pred]) / 3))
    return sum(scores) / len(scores)


answer_text = st.builds(
    lambda words, sep, pad: pad[0] + sep.join(words) + pad[1],
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    st.sampled_from([" ", "", "  "]),
    st.tuples(st.sampled_from(["", " ", "\n", "\t"]), st.sampled_from(["", " ", "\n"])),
)


# Spellings that some of the rules map onto each other, so that drawn predictions often nearly match.
SPELLINGS = [
    ["1,000", "1000", "1 000", "1,000.", "one thousand"],
    ["two", "2", "Two", "2.", "the two", "TWO"],
    ["dog", "the dog", "a dog", "an dog", "Dog", "dog.", "dog!", "(dog)", "the\tdog"],
    ["don't", "dont", "Dont", "do not", "Im", "im"],
    ["ice_cream", "ice cream", "ice-cream", "ice_cream."],
    ["yes", "Yes", "yes.", "YES", " yes", "yes\n", "no", "none", "0"],
    ["3.5", "3,5", "3. 5", "3 .5", "red-ish", "red ish", "red"],
]


@st.composite
def question(draw: st.DrawFn) -> tuple[str, list[dict]]:
    """A prediction and up to ten answer dicts drawn from a small pool, so that answers often agree."""
    group = draw(st.sampled_from(SPELLINGS))
    spelling = st.one_of(st.sampled_from(group), answer_text)
    pool = draw(st.lists(spelling, min_size=1, max_size=4))
    answers = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
    with_ids = draw(st.booleans())
    dicts = []
    for i, answer in enumerate(answers):
        record = {"answer": answer}
        if draw(st.booleans()):
            record["answer_confidence"] = draw(st.sampled_from(["yes", "maybe"]))
        if with_ids:
            record["answer_id"] = i + 1
        dicts.append(record)
    prediction = draw(st.one_of(st.sampled_from(pool), spelling))
    return prediction, dicts


@settings(max_examples=400, deadline=None)
@given(question(), st.sampled_from(["2021", "2017"]))
def test_question_accuracy_matches_restated_rules(case: tuple[str, list[dict]], revision: str) -> None:
    prediction, dicts = case
    assert question_accuracy(prediction, dicts, revision=revision) == ref_accuracy(prediction, dicts, revision)


@settings(max_examples=50, deadline=None)
@given(st.lists(question(), min_size=1, max_size=6))
def test_vqa_accuracy_matches_restated_rules(cases: list[tuple[str, list[dict]]]) -> None:
    annotations = [
        {"question_id": qid, "answers": dicts, "answer_type": "other", "question_type": f"t{qid % 2}"}
        for qid, (_, dicts) in enumerate(cases)
    ]
    predictions = {qid: prediction for qid, (prediction, _) in enumerate(cases)}
    per_question = [ref_accuracy(prediction, dicts, "2021") for prediction, dicts in cases]
    result = vqa_accuracy(predictions, annotations)
    assert result["overall"] == round(100 * sum(per_question) / len(per_question), 2)
    assert result["vqa_eval_revision"] == "2021"
