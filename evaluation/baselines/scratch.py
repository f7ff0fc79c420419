"""The random-initialisation control of a fine-tune: a backbone of the pretrained architecture, never trained.

Fine-tuning from it with the budget, config and seed of the pretrained run measures what pretraining adds.
The backbone is built as pretraining builds it (the checkpoint's `BEiT3Config`, including its init scheme), so
the two runs differ only in the weights they start from. The pipeline draws it with the fine-tune's seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from beit3_core.checkpoint import read_checkpoint_metadata, save_checkpoint
from beit3_core.config import BEiT3Config
from beit3_core.model import BEiT3

SCRATCH_SEED = 0


def architecture_of(checkpoint: str | Path) -> dict:
    """The `BEiT3Config` of one of our safetensors checkpoints (header only; no weights are read)."""
    metadata = read_checkpoint_metadata(checkpoint)
    if "config" not in metadata:
        raise ValueError(f"{checkpoint}: no model config in the safetensors header (not one of our checkpoints)")
    return json.loads(metadata["config"])


def random_init_like(checkpoint: str | Path, path: str | Path, seed: int = SCRATCH_SEED) -> Path:
    """Write a randomly initialised backbone with `checkpoint`'s architecture to `path` (atomically)."""
    config = BEiT3Config(**architecture_of(checkpoint))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BEiT3(config)
    return save_checkpoint(model, path, metadata={"init": "random", "seed": str(seed)})
