"""The trivial segmentation baseline: the majority class of the training pixels, predicted everywhere.

Scored with the same metrics as a model (`evaluation.metrics.segmentation`), so a fine-tuned segmenter's mIoU,
aAcc and mAcc can be read against it on the same split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.dense.segmentation.transforms import IGNORE_INDEX
from evaluation.metrics.segmentation import confusion_matrix, segmentation_metrics


def majority_class_baseline(train: Any, evaluated: Any) -> dict[str, Any]:
    """Metrics of predicting the most frequent training class on every pixel of `evaluated`.

    Args:
        train, evaluated: `ADE20KDataset` splits (ground truth through `label(image_id)`).

    Returns:
        `mIoU`, `aAcc`, `mAcc` (percent), `majority_class` (its name) and `num_images`.
    """
    num_classes = len(train.classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    for stem, _, _ in train.items:
        label = train.label(stem)
        counts += np.bincount(label[label != IGNORE_INDEX], minlength=num_classes)
    majority = int(np.argmax(counts))
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for stem, _, _ in evaluated.items:
        label = evaluated.label(stem)
        conf += confusion_matrix(np.full_like(label, majority), label, num_classes)
    metrics = segmentation_metrics(conf)
    return {key: metrics[key] for key in ("mIoU", "aAcc", "mAcc")} | {
        "majority_class": train.classes[majority],
        "num_images": len(evaluated.items),
    }
