"""Standard errors of a baseline on its test set, and the margin of a result over it."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

BOOTSTRAP_ROUNDS = 200
BOOTSTRAP_SEED = 0


def binomial_stderr(percent: float, n: int) -> float:
    """Standard error, in percent, of a per-item rate of `percent` measured on `n` items."""
    if n < 1:
        raise ValueError(f"a standard error needs at least one item, got n={n}")
    p = percent / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def bootstrap_stderr(
    items: Sequence[Any],
    score: Callable[[list[Any]], float],
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """Standard deviation of `score` over `rounds` resamples of `items` with replacement (seeded).

    `score` receives a list of items (duplicates included) and returns the metric on that resample.
    """
    if len(items) < 2:
        raise ValueError(f"a bootstrap needs at least two test items, got {len(items)}")
    rng = random.Random(seed)
    values = [score([items[rng.randrange(len(items))] for _ in items]) for _ in range(rounds)]
    mean = sum(values) / rounds
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (rounds - 1))


def bootstrap_method(rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> str:
    return f"bootstrap ({rounds} resamples, seed {seed})"


def baseline_result(
    predictor: str, metrics: dict[str, Any], stderr: dict[str, float], method: str, num_items: int
) -> dict[str, Any]:
    """The JSON-plain baseline record (numeric metrics only: notes and nested breakdowns are left out)."""
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "predictor": predictor,
        "metrics": numbers,
        "stderr": {k: float(v) for k, v in stderr.items()},
        "stderr_method": method,
        "num_items": int(num_items),
    }


def margin(value: float | None, baseline: float | None, stderr: float | None) -> float | None:
    """(value - baseline) / stderr: how many standard errors of the baseline a result lies above it; None when
    a part is missing or the standard error is zero."""
    if value is None or baseline is None or not stderr:
        return None
    return (value - baseline) / stderr


def paired_difference(ours: Sequence[float], other: Sequence[float]) -> dict[str, float | int]:
    """Means of two runs paired item by item (e.g. one fine-tune per seed, from pretraining and from random
    initialisation), the mean of their differences with its standard error (sample standard deviation of the
    differences / sqrt(n); None for one pair) and how many pairs `ours` wins, loses and ties. Values equal up to
    floating-point rounding (the same recalls summed in another order) are ties."""
    if len(ours) != len(other) or not ours:
        raise ValueError(f"paired results need equal, non-zero lengths, got {len(ours)} and {len(other)}")
    n = len(ours)
    diffs = [
        0.0 if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else a - b for a, b in zip(ours, other, strict=True)
    ]
    mean = sum(diffs) / n
    stderr = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    return {
        "n": n,
        "mean": sum(ours) / n,
        "other_mean": sum(other) / n,
        "difference": mean,
        "difference_stderr": stderr,
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
    }
