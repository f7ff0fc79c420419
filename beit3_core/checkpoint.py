"""Checkpoint I/O: the released BEiT-3 `.pth` files and the project's own safetensors files.

Released files (microsoft/unilm `beit3/`) hold a state dict under `model` (or `module`) with the backbone
under the prefix `beit3.` and, in the pretrained files, the MDM heads `mim_head.*` / `mlm_head.*`. The
backbone loads strictly: every missing, unexpected or mis-shaped key is an error that names it. The vision
position table is resized for other resolutions exactly as the reference loader does (3 leading rows kept,
bicubic over the patch grid, align_corners=False). Loading never unpickles arbitrary objects
(`weights_only=True`); writes are atomic (temporary file, then rename).
"""

import argparse
import json
import logging
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from beit3_core.config import BEiT3Config, get_config
from beit3_core.itc import ITC_HEAD_KEYS, BEiT3ForITC
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.model import BEiT3
from beit3_core.runtime.atomic import atomic_path

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "beit3."
BACKBONE_ROOTS = ("text_embed", "vision_embed", "encoder")
MDM_HEAD_PREFIXES = ("mim_head.", "mlm_head.")
HeadedModel = BEiT3ForMDM | BEiT3ForITC
VISION_POSITIONS_KEY = "encoder.embed_positions.A.weight"
FINAL_NORM_PREFIX = "encoder.layer_norm."
# Rows of the vision position table before the patch grid: two unused (fairseq offset) + CLS.
NUM_EXTRA_VISION_POSITIONS = 3
SAFETENSORS_FORMAT = "beit3-workflow/1"


@dataclass
class LoadReport:
    """What a released checkpoint held beyond what was loaded."""

    ignored_keys: list[str] = field(default_factory=list)
    """Keys not used (task heads, the final LN of models built without it, MDM heads when loading a backbone)."""
    interpolated: tuple[int, int] | None = None
    """(old, new) patch grid side when the vision positions were resized."""
    missing_heads: list[str] = field(default_factory=list)
    """Head keys the file lacks, left at their initialisation (only when loaded with strict_heads=False)."""

    def log(self, path: str | Path) -> None:
        if self.interpolated:
            logger.info("%s: vision positions interpolated from a %d^2 to a %d^2 grid", path, *self.interpolated)
        if self.ignored_keys:
            heads = sorted({k.split(".")[0] for k in self.ignored_keys})
            logger.info("%s: ignored %d unused keys (%s)", path, len(self.ignored_keys), ", ".join(heads))
        if self.missing_heads:
            logger.info("%s: holds no %s; left at initialisation", path, ", ".join(self.missing_heads))


def read_released_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a released `.pth` (under `model`, `module`, or at the top level), loaded safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Some released training checkpoints also pickle an argparse.Namespace of the run's arguments; allow that
    # one plain-data class and nothing else.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: cannot be loaded as a weights-only PyTorch checkpoint: {error}") from error
    for key in ("model", "module"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'model' or 'module')")
    return checkpoint


def interpolate_vision_positions(weight: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize the vision position table [3 + g^2, D] to [3 + num_patches, D] (bicubic over the grid)."""
    old_grid = int((weight.shape[0] - NUM_EXTRA_VISION_POSITIONS) ** 0.5)
    new_grid = int(num_patches**0.5)
    if old_grid**2 + NUM_EXTRA_VISION_POSITIONS != weight.shape[0] or new_grid**2 != num_patches:
        raise ValueError(f"vision position table of {weight.shape[0]} rows does not hold 3 + a square grid")
    if old_grid == new_grid:
        return weight
    extra, grid = weight[:NUM_EXTRA_VISION_POSITIONS], weight[NUM_EXTRA_VISION_POSITIONS:]
    dim = weight.shape[1]
    grid = grid.float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)  # [1, D, g, g]
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).to(weight.dtype)
    return torch.cat([extra, grid], dim=0)


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    if isinstance(model, BEiT3ForMDM):
        return MDM_HEAD_PREFIXES
    return ITC_HEAD_KEYS if isinstance(model, BEiT3ForITC) else ()


def load_released_state_dict(
    model: BEiT3 | HeadedModel, state_dict: dict[str, torch.Tensor], source: str = "checkpoint", strict_heads=True
) -> LoadReport:
    """Load a released-layout state dict into `model`: the backbone (and MDM or ITC heads) strictly, the rest reported.

    With `strict_heads=False` heads the file lacks stay at their initialisation (ITC tuning starting from an
    MDM checkpoint); heads it holds must still have the model's shapes.
    """
    backbone = model if isinstance(model, BEiT3) else model.beit3
    head_prefixes = _head_prefixes(model)
    report = LoadReport()
    weights: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    has_prefix = any(k.startswith(BACKBONE_PREFIX) for k in state_dict)
    for key, value in state_dict.items():
        if has_prefix and key.startswith(BACKBONE_PREFIX):
            weights[key[len(BACKBONE_PREFIX) :]] = value
        elif not has_prefix and key.split(".")[0] in BACKBONE_ROOTS:
            # A bare backbone state dict (e.g. torchscale's BEiT3 itself) has the same names without the prefix.
            weights[key] = value
        elif head_prefixes and key.startswith(head_prefixes):
            heads[key] = value
        else:
            report.ignored_keys.append(key)

    if not backbone.config.normalize_output:
        # IN-1k and VQA models drop the final LN; the pretrained file still carries it.
        for key in [k for k in weights if k.startswith(FINAL_NORM_PREFIX)]:
            report.ignored_keys.append(BACKBONE_PREFIX + key)
            del weights[key]

    if VISION_POSITIONS_KEY in weights:
        table = weights[VISION_POSITIONS_KEY]
        weights[VISION_POSITIONS_KEY] = interpolate_vision_positions(table, backbone.num_patches)
        old_rows = table.shape[0]
        if old_rows != weights[VISION_POSITIONS_KEY].shape[0]:
            report.interpolated = (int((old_rows - 3) ** 0.5), backbone.config.grid_size)

    _check_keys(backbone, weights, source, prefix=BACKBONE_PREFIX)
    backbone.load_state_dict(weights, strict=True)
    if head_prefixes:
        expected = {k: v for k, v in model.state_dict().items() if k.startswith(head_prefixes)}
        if not strict_heads:
            expected = {k: v for k, v in expected.items() if k in heads}
            report.missing_heads = sorted(set(_head_names(model)) - set(heads))
        _check_keys_against(expected, heads, source, prefix="")
        model.load_state_dict(heads, strict=False)
    return report


def _head_names(model: nn.Module) -> list[str]:
    prefixes = _head_prefixes(model)
    return [k for k in model.state_dict() if prefixes and k.startswith(prefixes)]


def _check_keys(module: nn.Module, weights: dict[str, torch.Tensor], source: str, prefix: str) -> None:
    _check_keys_against(module.state_dict(), weights, source, prefix)


def _check_keys_against(expected: dict, weights: dict, source: str, prefix: str) -> None:
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{prefix}{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(weights))
        if weights[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_preview(prefix, missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(prefix, unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:5])}")
    if problems:
        raise ValueError(f"{source} does not match the model: " + " | ".join(problems))


def _preview(prefix: str, keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(prefix + k for k in keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_released_checkpoint(path: str | Path, name: str = "beit3_base_patch16_224", **overrides) -> BEiT3:
    """Build the named backbone (e.g. `img_size=384`) and load a released BEiT-3 `.pth` into it."""
    model = BEiT3(get_config(name, **overrides))
    load_released_state_dict(model, read_released_state_dict(path), str(path)).log(path)
    return model


def load_released_mdm(path: str | Path, name: str = "beit3_base_patch16_224", **overrides) -> BEiT3ForMDM:
    """Backbone + MDM heads from a released pretrained file, to continue pretraining from it."""
    model = BEiT3ForMDM(get_config(name, **overrides))
    load_released_state_dict(model, read_released_state_dict(path), str(path)).log(path)
    return model


def load_released_itc(path: str | Path, name: str = "beit3_base_patch16_224", **overrides) -> BEiT3ForITC:
    """The dual encoder from a released ITC file (`beit3_*_itc_patch16_224.pth`): backbone and heads strictly."""
    model = BEiT3ForITC(get_config(name, **overrides))
    load_released_state_dict(model, read_released_state_dict(path), str(path)).log(path)
    return model


def released_state_dict(model: BEiT3 | HeadedModel) -> dict[str, torch.Tensor]:
    """`model`'s weights in the released key layout (`beit3.` prefix; MDM or ITC heads at the top level)."""
    if not model.config.is_release_layout:
        raise ValueError("only the release architecture (decoupled, subln, no VL experts) has a released layout")
    if not isinstance(model, BEiT3):
        # already `beit3.*` plus `mim_head.*`, `mlm_head.*` or `vision_head.weight`, `language_head.weight`,
        # `logit_scale`
        return model.state_dict()
    return {BACKBONE_PREFIX + k: v for k, v in model.state_dict().items()}


def export_released_checkpoint(model: BEiT3 | HeadedModel, path: str | Path) -> Path:
    """Write `{"model": state_dict}` in the released layout, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in released_state_dict(model).items()}
    return _atomic_write(Path(path), lambda tmp: torch.save({"model": state}, tmp))


def save_checkpoint(
    model: BEiT3 | HeadedModel,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The project's format: safetensors with the config (and the model kind) in the header metadata.

    `state_dict`: the full weights when `model` holds only a shard of them (FSDP); default `model.state_dict()`.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    header = {
        "format": SAFETENSORS_FORMAT,
        "kind": "mdm" if isinstance(model, BEiT3ForMDM) else "itc" if isinstance(model, BEiT3ForITC) else "backbone",
        "config": json.dumps(model.config.to_dict()),
    }
    if isinstance(model, BEiT3ForMDM):
        header["loss_weights"] = json.dumps(model.loss_weights)
    header |= metadata or {}
    return _atomic_write(Path(path), lambda tmp: _save_canonical(state, tmp, header))


def _save_canonical(state: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """`save_file`, with the JSON header's keys sorted: the same tensors and metadata give the same bytes.

    safetensors writes the `__metadata__` entries in hash-map order, which varies from process to process, and
    every step downstream of a checkpoint is keyed by the file's sha256; an identical rerun must keep those keys.
    The tensor data (already laid out in a fixed order) is copied unchanged; `data_offsets` are relative to it.
    """
    raw = path + ".raw"
    try:
        save_file(state, raw, metadata=metadata)
        with open(raw, "rb") as src, open(path, "wb") as dst:
            (length,) = struct.unpack("<Q", src.read(8))
            header = json.loads(src.read(length))
            text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors pads it
            dst.write(struct.pack("<Q", len(text)) + text)
            shutil.copyfileobj(src, dst, 1 << 24)
    finally:
        Path(raw).unlink(missing_ok=True)


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str | Path, **overrides) -> BEiT3 | HeadedModel:
    """Rebuild a model saved by `save_checkpoint` (config from the file, fields overridable) and load it strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata = read_checkpoint_metadata(path)
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise ValueError(f"{path}: not a {SAFETENSORS_FORMAT} safetensors checkpoint (metadata {metadata})")
    config = BEiT3Config(**json.loads(metadata["config"])).replace(**overrides)
    if metadata.get("kind") == "mdm":
        model = BEiT3ForMDM(config, loss_weights=json.loads(metadata.get("loss_weights", "{}")))
    elif metadata.get("kind") == "itc":
        model = BEiT3ForITC(config)
    else:
        model = BEiT3(config)
    state = load_file(str(path))
    _check_keys(model, state, str(path), prefix="")
    model.load_state_dict(state, strict=True)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A released `.pth` or one of our safetensors models as one state dict in the released naming: the backbone
    under `beit3.`, heads (MDM or ITC) at the top level."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_released_state_dict(path)
    loaded = load_checkpoint(path)
    if isinstance(loaded, BEiT3):
        return {BACKBONE_PREFIX + k: v for k, v in loaded.state_dict().items()}
    return loaded.state_dict()


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write(str(tmp))
    return path
