"""Benchmark tasks of BEiT-3 fine-tuning and evaluation, registered in `TASKS` by name.

Importing this package registers: imagenet, vqav2, nlvr2, coco_captioning, nocaps, coco_retrieval,
flickr30k_retrieval, ade20k, coco_detection. See `evaluation.tasks.base.Task` for the contract.
"""

# Importing the modules registers the tasks.
from evaluation.tasks import ade20k, captioning, coco_detection, imagenet, nlvr2, retrieval, vqav2  # noqa: F401
from evaluation.tasks.base import TASKS, Task, get_task, layer_decay_groups

__all__ = ["TASKS", "Task", "get_task", "layer_decay_groups"]
