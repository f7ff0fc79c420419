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
