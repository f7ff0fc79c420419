"""The checkpoint folder format of every training kind: model, optimizer + RNG, and a JSON of the step.

    model.safetensors    the kind writes it (its own header: model config, task, head options)
    optimizer.pt         {"optimizer": state dict, "rng": {"torch", "cuda"?}} (loaded with weights_only=True)
    train_state.json     {"step": optimizer steps done, "config": the run's config, ...the kind's extras}

Sharded (FSDP2, each rank holds a shard): every rank writes its shards of model and optimizer through
`torch.distributed.checkpoint` (`__<rank>_0.distcp`, rank 0 adds `.metadata`) into its own folder and Ray
Train merges the folders into one checkpoint; loading reshards, so a run saved by N workers resumes on M. At
the final step the whole model is also gathered and rank 0 writes `model.safetensors` for the exports.

A folder is assembled in a temporary directory and handed to Ray Train, which persists it and then registers
it, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
SHARDED_METADATA = ".metadata"
"""Written by `torch.distributed.checkpoint` next to the shard files: marks a sharded checkpoint."""

ModelWriter = Callable[[Path, dict | None], None]
"""(path, full state dict or None = the model's own) -> writes the model file."""
ModelReader = Callable[[Path], None]
"""path -> loads the model file into the model, strictly."""


def save_state(folder: Path, write_model: ModelWriter, optimizer: torch.optim.Optimizer, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder / MODEL_FILE, None)
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_state(folder: Path, read_model: ModelReader, optimizer: torch.optim.Optimizer, model=None) -> dict:
    """Restore model, optimizer and RNG in place; returns the JSON state. `model` is needed for sharded folders."""
    if (folder / SHARDED_METADATA).is_file():
        return load_sharded_state(folder, model, optimizer)
    read_model(folder / MODEL_FILE)
    extra = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    set_rng_state(extra["rng"])
    return json.loads((folder / STATE_FILE).read_text())


def save_sharded_state(
    folder: Path, model, optimizer, state: dict, rank: int, write_model: ModelWriter | None = None
) -> None:
    """Collective (every rank calls it): this rank's shards into `folder`; with `write_model`, the whole model
    too (gathered on every rank, written by rank 0)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
    if write_model is not None:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            write_model(folder / MODEL_FILE, full)
    if rank == 0:
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_sharded_state(folder: Path, model, optimizer) -> dict:
    """Collective: load a sharded checkpoint onto this run's sharding, whatever the number of ranks that saved it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((folder / STATE_FILE).read_text())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
