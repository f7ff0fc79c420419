"""The training state in one folder: model (safetensors), optimizer, and a JSON of step, data position, RNG.

The data stream is a pure function of (seed, step, rank), so the step is the exact data position: a run
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
    loaded = load_checkpoint(folder / MODEL_FILE)
    model.load_state_dict(loaded.state_dict(), strict=True)
    extra = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    _set_rng_state(extra["rng"])
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
