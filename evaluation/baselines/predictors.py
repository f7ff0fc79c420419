"""Input-blind predictors over plain labels and answers (the tasks turn their splits into these)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence


def ranked_by_frequency(labels: Iterable[Hashable], k: int | None = None) -> list[Hashable]:
    """Labels by decreasing count, ties by increasing label (so the result does not depend on item order)."""
    counts = Counter(labels)
    if not counts:
        raise ValueError("no training labels to count")
    ranked = sorted(counts, key=lambda label: (-counts[label], label))
    return ranked if k is None else ranked[:k]


def majority_label(labels: Iterable[Hashable]) -> Hashable:
    """The most frequent label (ties: the smallest)."""
    return ranked_by_frequency(labels, 1)[0]


def most_frequent_answer(answer_lists: Iterable[Sequence[str]], allowed: Iterable[str] | None = None) -> str:
    """The answer given most often over all human answers of all questions (ties: alphabetical first).

    Args:
        answer_lists: Per training question, its human answers (normalised as the answer vocabulary is).
        allowed: Answers the model could predict (the vocabulary); others are not counted.
    """
    keep = set(allowed) if allowed is not None else None
    answers = [a for answers in answer_lists for a in answers if keep is None or a in keep]
    return ranked_by_frequency(answers, 1)[0]
