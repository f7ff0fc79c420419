"""The training state in one folder: model, optimizer, and a JSON of step, data position, RNG.

Two layouts, by strategy:
- DDP (every rank holds the whole model): rank 0 writes `model.safetensors` and `optimizer.pt`.
- FSDP2 (each rank holds a shard): every rank writes its shards of model and optimizer through
  `torch.distributed.checkpoint` (`__<rank>_0.distcp` files, rank 0 adds `.metadata`) into its own folder,
  and Ray Train merges the folders into one checkpoint. Loading reshards, so a run saved by N workers resumes
  on M. At the final step the full weights are also gathered and rank 0 writes `model.safetensors`, which the
  driver exports (safetensors and the released layout).

The data stream is a pure function of (seed, step, data rank), so the step is the exact data position: a run
restored from step s reads exactly the samples an uninterrupted run reads from step s + 1 on.
"""

import json
from pathlib import Path

import torch

from beit3_core.checkpoint import load_checkpoint, save_checkpoint
from beit3_core.mdm import BEiT3ForMDM

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
SHARDED_METADATA = ".metadata"
"""Written by `torch.distributed.checkpoint` next to the shard files: marks a sharded checkpoint."""


def save_training_state(
    folder: Path, model: BEiT3ForMDM, optimizer: torch.optim.Optimizer, step: int, data_position: dict, config: dict
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, folder / MODEL_FILE, metadata={"step": str(step)})
    torch.save(
        {"optimizer": optimizer.state_dict(), "rng": _rng_state()},
        folder / OPTIMIZER_FILE,
    )
    state = {"step": step, "data_position": data_position, "config": config}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_training_state(folder: Path, model: BEiT3ForMDM, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place; returns the JSON state (step, data position, config)."""
    if (folder / SHARDED_METADATA).is_file():
        return load_sharded_state(folder, model, optimizer)
    loaded = load_checkpoint(folder / MODEL_FILE)
    model.load_state_dict(loaded.state_dict(), strict=True)
    extra = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    _set_rng_state(extra["rng"])
    return json.loads((folder / STATE_FILE).read_text())


def save_sharded_state(
    folder: Path,
    model: BEiT3ForMDM,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict,
    rank: int,
    final: bool,
) -> None:
    """Collective (every rank calls it): this rank's shards into `folder`; see the module docstring."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
    if final:  # the whole model for the exports; gathered on every rank (collective), written by rank 0
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            save_checkpoint(model, folder / MODEL_FILE, metadata={"step": str(step)}, state_dict=full)
    if rank == 0:
        state = {"step": step, "data_position": {"step": step}, "config": config}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_sharded_state(folder: Path, model: BEiT3ForMDM, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: load a sharded checkpoint onto this run's sharding, whatever the number of ranks that saved it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((folder / STATE_FILE).read_text())


def _rng_state() -> dict:
    # Only torch's generators matter: the data stream and masks draw from generators seeded by (seed, step,
    # rank), and drop path is reseeded every step, so these states are restored for completeness.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
