"""A benchmark unit's baseline from its files: read the training and evaluation splits, ask the task.

The splits are read exactly as fine-tuning reads them (the task's `dataset` with the run's data options), so
the baseline is scored on the very items the fine-tuned model is scored on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.baselines.retrieval import random_ranking_recall


def unit_baseline(
    task_name: str,
    root: str | Path,
    eval_split: str,
    *,
    train_split: str = "train",
    img_size: int = 224,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The trivial baseline of a fine-tuned unit on its evaluation split (`evaluation.baselines` record).

    Args:
        task_name: An `evaluation.tasks` name.
        root: The benchmark's files (the fine-tuning config's `data.root`).
        eval_split: The split the fine-tuned model is scored on.
        train_split: The split the predictor may count (majority class, most frequent answer).
        img_size: Image size of the datasets (images are not read to build a baseline).
        options: The fine-tuning config's `data.options` (e.g. the answer vocabulary's `min_answer_count`).
    """
    from evaluation.tasks import get_task

    task = get_task(task_name)
    options = dict(options or {})
    # No tokenizer: a baseline counts labels, answers and captions and never reads an item's tokens or pixels.
    train_set = task.dataset(train_split, root, None, img_size, **options)
    eval_set = task.dataset(eval_split, root, None, img_size, **options)
    return task.baseline(train_set, eval_set) | {"split": eval_split}


def zeroshot_baseline(unit: str, root: str | Path) -> dict[str, Any]:
    """Random ranking of a zero-shot retrieval unit's test split (`evaluation.zeroshot`)."""
    from evaluation.zeroshot import SPLIT, read_zeroshot_split

    split = read_zeroshot_split(unit, root)
    return random_ranking_recall([len(image.captions) for image in split.images]) | {"split": SPLIT}
