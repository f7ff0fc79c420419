"""Save and load VQ-KD tokenizers: our safetensors format and the released BEiT v2 `.pth` checkpoints.

Our format: one safetensors file holding the full state dict (official key names) with the JSON config and
the `tokenizer_id` in its metadata. The id is the sha256 of the canonical config JSON and every tensor's
name, dtype, shape and bytes, so it changes with any weight and is what token shards record as provenance.

Official checkpoints (microsoft/unilm BEiT v2 release, e.g. `vqkd_encoder_base_decoder_3x768x12_clip-
d5036aa7.pth`) are `{"model": state_dict, ...}`; upstream `beit2/modeling_vqkd.py` drops keys starting with
`loss`, `teacher` or `scaling` and then loads strictly, and so do we. The config is read off the shapes.
"""

import argparse
import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from beit3_core.runtime.atomic import atomic_path
from preprocessing.vqkd.model import VQKD, VQKDConfig

__all__ = [
    "config_from_official_state_dict",
    "load_official_vqkd",
    "load_vqkd",
    "map_official_state_dict",
    "save_vqkd",
    "tokenizer_id",
]

FORMAT = "beit3-vqkd-v1"
_DROPPED_PREFIXES = ("loss", "teacher", "scaling")  # teacher copy, its input scaler, legacy loss modules


def tokenizer_id(tokenizer: VQKD) -> str:
    """Stable sha256 hex digest of the config and all state-dict tensors."""
    digest = hashlib.sha256(json.dumps(tokenizer.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_vqkd(tokenizer: VQKD, path: str | Path) -> str:
    """Writes the tokenizer atomically (temp file in the target folder + os.replace); returns its id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tokenizer.state_dict().items()}
    ident = tokenizer_id(tokenizer)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(tokenizer.config.to_dict(), sort_keys=True),
        "tokenizer_id": ident,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return ident


def load_vqkd(path: str | Path, device: str | torch.device = "cpu") -> VQKD:
    """Loads a tokenizer written by `save_vqkd` (strict keys, id verified), in eval mode."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format={metadata.get('format')!r})")
        state_dict = {name: f.get_tensor(name) for name in f.keys()}
    model = VQKD(VQKDConfig(**json.loads(metadata["config"])))
    _load_strict(model, state_dict)
    if tokenizer_id(model) != metadata["tokenizer_id"]:
        raise ValueError(f"{path}: weights do not match the recorded tokenizer_id (corrupted or edited file)")
    return model.to(device).eval()


def _max_block(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    ids = [int(m.group(1)) for key in state_dict if (m := re.match(rf"{prefix}\.blocks\.(\d+)\.", key))]
    if not ids:
        raise KeyError(f"no '{prefix}.blocks.*' keys in the checkpoint")
    return max(ids) + 1


def config_from_official_state_dict(state_dict: dict[str, torch.Tensor]) -> VQKDConfig:
    """Infers sizes from tensor shapes; head counts are not stored, so they are width // 64 (12 for ViT-B)."""
    required = ("encoder.pos_embed", "encoder.patch_embed.proj.weight", "decoder.pos_embed")
    required += ("encode_task_layer.2.weight", "decode_task_layer.2.weight", "quantize.embedding.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise KeyError(f"not a VQ-KD checkpoint: missing keys {missing}")
    encoder_dim = state_dict["encoder.pos_embed"].shape[-1]
    decoder_dim = state_dict["decoder.pos_embed"].shape[-1]
    patch_size = state_dict["encoder.patch_embed.proj.weight"].shape[-1]
    grid = round((state_dict["encoder.pos_embed"].shape[1] - 1) ** 0.5)
    num_codes, code_dim = state_dict["quantize.embedding.weight"].shape
    return VQKDConfig(
        img_size=grid * patch_size,
        patch_size=patch_size,
        encoder_depth=_max_block(state_dict, "encoder"),
        encoder_dim=encoder_dim,
        encoder_heads=max(1, encoder_dim // 64),
        decoder_depth=_max_block(state_dict, "decoder"),
        decoder_dim=decoder_dim,
        decoder_heads=max(1, decoder_dim // 64),
        mlp_ratio=state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / encoder_dim,
        code_dim=code_dim,
        num_codes=num_codes,
        teacher_dim=state_dict["decode_task_layer.2.weight"].shape[0],
    )


def map_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout -> ours: drops teacher/scaling/loss keys; the remaining names are identical."""
    return {k: v.float() for k, v in state_dict.items() if not k.startswith(_DROPPED_PREFIXES)}


def _load_strict(model: VQKD, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict load whose errors list every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise KeyError(f"VQ-KD state dict mismatch: missing={missing} unexpected={unexpected} shape={shapes}")
    model.load_state_dict(state_dict, strict=True)


def _torch_load(path: str | Path) -> dict:
    """`torch.load` with weights_only=True; training checkpoints also pickle an argparse.Namespace (`args`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)


def load_official_vqkd(path: str | Path, device: str | torch.device = "cpu") -> VQKD:
    """Loads a released BEiT v2 VQ-KD checkpoint (e.g. `vqkd_encoder_base_decoder_1x768x12_clip-d93179da.pth`).

    Raises:
        KeyError: keys missing, unexpected or of the wrong shape (all of them are named).
        ValueError: the codebook was never k-means-initialized (`initted` != 1) or its rows are not unit norm.
    """
    checkpoint = _torch_load(path)
    state_dict = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    state_dict = map_official_state_dict(state_dict)
    model = VQKD(config_from_official_state_dict(state_dict))
    _load_strict(model, state_dict)
    initted = model.quantize.embedding.initted
    if initted.numel() != 1 or float(initted) != 1.0:
        raise ValueError(f"{path}: quantize.embedding.initted is {initted.tolist()}, expected [1.0]")
    norms = model.quantize.embedding.weight.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"{path}: codebook rows are not unit norm (range {norms.min():.4f}-{norms.max():.4f})")
    return model.to(device).eval()
