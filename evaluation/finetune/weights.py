"""Task models for fine-tuning: resolve the backbone shape, initialise from a checkpoint, save and reload.

Sources of initial weights (`beit3_core.checkpoint` does the loading and the checks):
- our safetensors: a backbone or an MDM model (`load_checkpoint`; the `.beit3` of an MDM model), or a
  fine-tuned task model written by `save_task_checkpoint` (its `beit3.*` part);
- a released `.pth` (`read_released_state_dict`), loaded into `model.beit3` by `load_released_state_dict`,
  which drops the final LN for models without it and resizes the vision positions for another resolution.
Task heads stay at their initialisation, except the heads named in `copy_heads` (captioning: `mlm_head`) when
the source has them with the same shapes.

Fine-tuned models are saved as safetensors whose header holds the format, `kind: task`, the task, the backbone
config and the head options, so `load_task_checkpoint` rebuilds them without any other file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from beit3_core.checkpoint import (
    BACKBONE_PREFIX,
    SAFETENSORS_FORMAT,
    load_released_state_dict,
    read_checkpoint_metadata,
    read_state_dict,
)
from beit3_core.runtime.atomic import atomic_path
from evaluation.tasks import Task, get_task

logger = logging.getLogger(__name__)

TASK_KIND = "task"


def head_options_of(dataset: Any) -> dict[str, int]:
    """Head sizes the training split implies: its class list (ImageNet) or answer vocabulary (VQAv2)."""
    if hasattr(dataset, "classes"):
        return {"num_classes": len(dataset.classes)}
    if hasattr(dataset, "answers"):
        return {"num_answers": len(dataset.answers)}
    return {}


def heads_to_copy(task: Task) -> tuple[str, ...]:
    """Prefixes of the pretrained heads a task keeps (`Task.pretrained_heads`: the MLM head for captioning)."""
    return task.pretrained_heads


def resolve_backbone(
    name: str, overrides: dict, init_checkpoint: str | None, vocab_size: int | None, img_size: int, drop_path: float
) -> dict[str, Any]:
    """BEiT3Config overrides for `task.build_model(name, ...)`.

    With one of our safetensors files the whole shape comes from its header (the named size is ignored); with a
    released file or no file the named size is used. Without a file the text vocabulary defaults to the
    tokenizer's. `overrides`, the image size and the drop-path rate apply on top.
    """
    resolved: dict[str, Any] = {}
    if init_checkpoint and Path(init_checkpoint).suffix == ".safetensors":
        resolved = json.loads(read_checkpoint_metadata(init_checkpoint)["config"])
        resolved.pop("normalize_output", None)  # fixed by the task
    elif not init_checkpoint and vocab_size is not None:
        resolved["vocab_size"] = vocab_size
    return resolved | dict(overrides) | {"img_size": img_size, "drop_path_rate": drop_path}


def build_task_model(task: Task, name: str, backbone: dict, head_options: dict) -> nn.Module:
    return task.build_model(name, **head_options, **backbone)


def read_source_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The source's weights with the backbone under `beit3.` and heads at the top level (released layout)."""
    path = Path(path)
    if path.suffix == ".safetensors" and read_checkpoint_metadata(path).get("kind") == TASK_KIND:
        return load_file(str(path))
    return read_state_dict(path)


def initialise(model: nn.Module, path: str | Path, copy_heads: Iterable[str] | None = ()) -> list[str]:
    """Load the source's backbone into `model.beit3` and the listed heads; returns the head keys copied.

    Args:
        model: A task model with a `beit3` backbone.
        path: The source checkpoint.
        copy_heads: Key prefixes of heads to copy when present with the model's shapes; None = every head key
            the model shares with the source (evaluating a zero-shot checkpoint such as ITC).
    """
    state = read_source_state(path)
    report = load_released_state_dict(model.beit3, state, str(path))
    report.log(path)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}
    prefixes = tuple(copy_heads) if copy_heads is not None else None
    heads = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and (prefixes is None or k.startswith(prefixes))
    }
    if heads:
        model.load_state_dict(heads, strict=False)
        logger.info("%s: copied heads %s", path, sorted({k.split(".")[0] for k in heads}))
    return sorted(heads)


def save_task_checkpoint(model: nn.Module, path: str | Path, task: str, backbone_name: str, head_options: dict) -> Path:
    """The fine-tuned model as safetensors with everything needed to rebuild it in the header; atomic."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "kind": TASK_KIND,
        "task": task,
        "backbone_name": backbone_name,
        "config": json.dumps(model.beit3.config.to_dict()),
        "head_options": json.dumps(head_options),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def is_task_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".safetensors" and read_checkpoint_metadata(path).get("kind") == TASK_KIND


def load_task_checkpoint(path: str | Path, task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned model (as `task`, default the one it was trained for) and load it strictly.

    Returns the model and its header (`task`, `backbone_name`, `config`, `head_options` decoded).
    """
    metadata = read_checkpoint_metadata(path)
    if metadata.get("format") != SAFETENSORS_FORMAT or metadata.get("kind") != TASK_KIND:
        raise ValueError(f"{path}: not a fine-tuned task checkpoint (metadata {metadata})")
    header = metadata | {"config": json.loads(metadata["config"]), "head_options": json.loads(metadata["head_options"])}
    backbone = {k: v for k, v in header["config"].items() if k != "normalize_output"}
    model = build_task_model(
        get_task(task or header["task"]), header["backbone_name"], backbone, header["head_options"]
    )
    model.load_state_dict(load_file(str(path)), strict=True)
    return model, header
