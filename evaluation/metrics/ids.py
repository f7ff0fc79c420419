"""Id-set checks shared by the metrics: predictions must cover exactly the ground-truth items."""

from collections.abc import Hashable, Iterable


def check_same_ids(expected: Iterable[Hashable], given: Iterable[Hashable], *, what: str, max_shown: int = 5) -> None:
    """Raises a ValueError naming missing and unknown ids when two id sets differ.

    Args:
        expected: Ids of the ground truth.
        given: Ids of the predictions.
        what: Name of the ids in the message, e.g. "question ids".
        max_shown: How many ids of each kind the message lists.

    Raises:
        ValueError: If some expected id has no prediction or some predicted id is not expected.
    """
    expected, given = set(expected), set(given)
    missing, unknown = expected - given, given - expected
    if not missing and not unknown:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} {what} without a prediction (e.g. {sample_ids(missing, max_shown)})")
    if unknown:
        parts.append(f"{len(unknown)} predicted {what} not in the ground truth (e.g. {sample_ids(unknown, max_shown)})")
    raise ValueError("; ".join(parts))


def sample_ids(ids: Iterable[Hashable], max_shown: int = 5) -> str:
    """Formats the first few ids (sorted by their string form, so mixed types work) for an error message."""
    return ", ".join(repr(i) for i in sorted(ids, key=str)[:max_shown])
