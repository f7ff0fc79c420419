"""Evaluate a task model on one split: `task.predict` over the split, `task.evaluate`, `task.write_submission`.

The split is read unpadded and in order (no distributed sampler), so every example counts exactly once, which
the release's accuracy meters do not guarantee (spec benchmarks.md section 2).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from beit3_core.runtime.progress import ProgressDisplay
from evaluation.tasks import Task

_METRIC_NAME = re.compile(r"[^\w.\- /]")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_split(
    task: Task,
    model: nn.Module,
    dataset: Any,
    out_dir: str | Path,
    batch_size: int,
    tokenizer: Any = None,
    device: torch.device | str = "cpu",
    loader_workers: int = 0,
) -> tuple[dict[str, Any], Path]:
    """(metrics, submission path) of `model` on `dataset`; the submission is written under `out_dir`."""
    device = torch.device(device)
    model.to(device).eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate, num_workers=loader_workers
    )
    records = []
    with torch.no_grad(), ProgressDisplay(f"evaluate {task.name} {dataset.split}", len(loader)) as progress:
        started = time.perf_counter()
        for index, batch in enumerate(loader, 1):
            records += task.predict(model, to_device(batch, device), tokenizer)
            progress.update(index, rate=len(records) / (time.perf_counter() - started), force=index == len(loader))
    metrics = task.evaluate(records, dataset)
    submission = task.write_submission(records, Path(out_dir) / task.submission_name(dataset.split), dataset)
    return metrics, Path(submission)


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of a (nested) metrics dict as MLflow metric names: nested keys joined by `.`, odd characters `_`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _METRIC_NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= numeric_metrics(value, prefix=f"{name}.")
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[name] = float(value)
    return out
