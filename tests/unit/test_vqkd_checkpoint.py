"""Checkpoints of preprocessing.vqkd: our safetensors round trip and the official BEiT v2 key layout."""

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocessing.vqkd.checkpoint import load_official_vqkd, load_vqkd, save_vqkd, tokenizer_id
from preprocessing.vqkd.model import VQKD, vqkd_tiny


def official_state_dict(
    dim: int, depth: int, decoder_depth: int, teacher_dim: int, num_codes: int, patch: int = 16, grid: int = 14
) -> dict[str, torch.Tensor]:
    """Random tensors under the released `vqkd_encoder_base_decoder_*` key names and shapes (tokenizer spec 1.5)."""
    code_dim, hidden = 32, 4 * dim
    shapes: dict[str, tuple[int, ...]] = {}
    for part, blocks, in_chans, kernel in (("encoder", depth, 3, patch), ("decoder", decoder_depth, code_dim, 1)):
        shapes[f"{part}.cls_token"] = (1, 1, dim)
        shapes[f"{part}.pos_embed"] = (1, 1 + grid * grid, dim)
        shapes[f"{part}.patch_embed.proj.weight"] = (dim, in_chans, kernel, kernel)
        shapes[f"{part}.patch_embed.proj.bias"] = (dim,)
        for i in range(blocks):
            block = f"{part}.blocks.{i}"
            for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.q_bias", "attn.v_bias"):
                shapes[f"{block}.{name}"] = (dim,)
            shapes[f"{block}.attn.qkv.weight"] = (3 * dim, dim)
            shapes[f"{block}.attn.proj.weight"], shapes[f"{block}.attn.proj.bias"] = (dim, dim), (dim,)
            shapes[f"{block}.mlp.fc1.weight"], shapes[f"{block}.mlp.fc1.bias"] = (hidden, dim), (hidden,)
            shapes[f"{block}.mlp.fc2.weight"], shapes[f"{block}.mlp.fc2.bias"] = (dim, hidden), (dim,)
        shapes[f"{part}.fc_norm.weight"], shapes[f"{part}.fc_norm.bias"] = (dim,), (dim,)
    for layer, out_dim in (("encode_task_layer", code_dim), ("decode_task_layer", teacher_dim)):
        shapes[f"{layer}.0.weight"], shapes[f"{layer}.0.bias"] = (dim, dim), (dim,)
        shapes[f"{layer}.2.weight"], shapes[f"{layer}.2.bias"] = (out_dim, dim), (out_dim,)
    shapes["quantize.embedding.weight"] = (num_codes, code_dim)
    shapes["quantize.embedding.cluster_size"] = (num_codes,)
    shapes["quantize.embedding.embed_avg"] = (num_codes, code_dim)
    shapes["quantize.cluster_size"] = (num_codes,)
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}
    state["quantize.embedding.weight"] = torch.nn.functional.normalize(state["quantize.embedding.weight"], dim=1)
    state["quantize.embedding.initted"] = torch.tensor([1.0])
    return state


def _save_official(path: Path, state: dict[str, torch.Tensor], **extra) -> Path:
    torch.save({"model": state, "epoch": 99, **extra}, path)
    return path


def test_official_layout_matches_our_state_dict_keys() -> None:
    official = official_state_dict(dim=768, depth=12, decoder_depth=1, teacher_dim=512, num_codes=8192)
    ours = VQKD(vqkd_tiny(**_base_1x_fields())).state_dict()
    assert set(ours) == set(official)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}


def _base_1x_fields() -> dict:
    """`vqkd_encoder_base_decoder_1x768x12_clip` sizes."""
    encoder = dict(encoder_depth=12, encoder_dim=768, encoder_heads=12)
    return encoder | dict(decoder_depth=1, decoder_dim=768, decoder_heads=12, num_codes=8192, teacher_dim=512)


def test_load_official_maps_every_tensor(tmp_path: Path) -> None:
    state = official_state_dict(dim=64, depth=2, decoder_depth=3, teacher_dim=24, num_codes=40, patch=8, grid=4)
    teacher_junk = {"teacher_model.visual.proj": torch.zeros(2), "scaling_layer.shift": torch.zeros(3)}
    path = _save_official(tmp_path / "vqkd.pth", state | teacher_junk, args={"lr": 2e-4})

    model = load_official_vqkd(path)

    config = model.config
    assert (config.img_size, config.patch_size, config.encoder_depth, config.encoder_dim) == (32, 8, 2, 64)
    assert (config.decoder_depth, config.teacher_dim, config.num_codes, config.code_dim) == (3, 24, 40, 32)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert not model.training
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_load_official_accepts_pickled_namespace(tmp_path: Path) -> None:
    state = official_state_dict(dim=64, depth=1, decoder_depth=1, teacher_dim=8, num_codes=8, patch=8, grid=2)
    path = _save_official(tmp_path / "vqkd.pth", state, args=argparse.Namespace(lr=2e-4))
    assert load_official_vqkd(path).num_codes == 8


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("encoder.blocks.0.attn.q_bias"), "missing=\\['encoder.blocks.0.attn.q_bias'\\]"),
        (lambda s: s.update({"encoder.norm.weight": torch.ones(64)}), "unexpected=\\['encoder.norm.weight'\\]"),
        (lambda s: s.update({"encoder.blocks.0.attn.qkv.bias": torch.ones(192)}), "encoder.blocks.0.attn.qkv.bias"),
        (lambda s: s.update({"encoder.fc_norm.bias": torch.ones(63)}), "encoder.fc_norm.bias: \\(63,\\)"),
        (lambda s: s.pop("quantize.embedding.initted"), "quantize.embedding.initted"),
    ],
)
def test_load_official_rejects_bad_keys(tmp_path: Path, edit, message: str) -> None:
    state = official_state_dict(dim=64, depth=1, decoder_depth=1, teacher_dim=8, num_codes=8, patch=8, grid=2)
    edit(state)
    with pytest.raises(KeyError, match=message):
        load_official_vqkd(_save_official(tmp_path / "vqkd.pth", state))


def test_load_official_rejects_uninitialized_codebook(tmp_path: Path) -> None:
    state = official_state_dict(dim=64, depth=1, decoder_depth=1, teacher_dim=8, num_codes=8, patch=8, grid=2)
    state["quantize.embedding.initted"] = torch.tensor([0.0])
    with pytest.raises(ValueError, match="initted"):
        load_official_vqkd(_save_official(tmp_path / "vqkd.pth", state))


def _trained_like_tiny() -> VQKD:
    torch.manual_seed(1)
    model = VQKD(vqkd_tiny(img_size=32, patch_size=8, num_codes=32, teacher_dim=12, encoder_depth=2))
    model.train()(torch.rand(4, 3, 32, 32), torch.randn(4, 16, 12))  # k-means init + one EMA step
    return model.eval()


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _trained_like_tiny()
    path = tmp_path / "sub" / "tok.safetensors"
    ident = save_vqkd(model, path)
    assert ident == tokenizer_id(model) and len(ident) == 64
    assert [p.name for p in path.parent.iterdir()] == ["tok.safetensors"]  # no temp file left behind

    loaded = load_vqkd(path)
    assert loaded.config == model.config and tokenizer_id(loaded) == ident
    images = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.encode(images), model.encode(images))


def test_tokenizer_id_tracks_weights_and_config(tmp_path: Path) -> None:
    model = _trained_like_tiny()
    ident = tokenizer_id(model)
    assert tokenizer_id(_trained_like_tiny()) == ident  # stable across processes and rebuilds
    with torch.no_grad():
        model.quantize.embedding.weight[0, 0] += 1e-6
    assert tokenizer_id(model) != ident

    path = tmp_path / "tok.safetensors"
    save_vqkd(model, path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip bits in the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="tokenizer_id"):
        load_vqkd(path)


# Tokens of unilm `beit2/demo/ILSVRC2012_val_00031649.JPEG` under `vqkd_encoder_base_decoder_1x768x12_clip`
# (upstream `beit2/test_get_code.py`), row-major over the 14x14 grid.
GOLDEN_TOKENS = """
3812 7466 1913 1913 1903 1913 1903 1913 3812 7820 6337 2189 7466 7466
2492 3743 5268 3481 5268 4987  445 8009 3501 5268 7820 7831 4816 2189
7549 7549 5548 4987  445 4198  445 5216 4987 5268 3278 5203 6337 1799
 847 6454 4527 5302 8009 3743 5216 4678 3743 4858 5203 4816 7831 2189
7549 5386 6628 5004 2779 7131 7131 7131 4928 3743  119  445 1903 7466
4527 5386 5398 5704 2104 5398 2779 7258 7989  624 7131 1186 5216 7466
8015 5004  452 7243 3145 6690 7017 2104 5398 4198 7989 7131 3717 7466
 580 5004 5004 6202 6202 6202 1826 7521 1473 5722 2486 5663 4928 3941
 580 5548 7983 7983 7983 2104 5004 2063 2637 1822 3100 3100 1405 1637
8187 5433 2779 5398 5004 5004 1107 3469 3469 5302 2590 6381 3100 4194
3717  356 7131 7688 5104 3081 3812 3950 1186 7131 7131 3717 4399 1186
2221 6501 7131 5433 3014 3950 3278 2812 7131 1186 7036 6947 7036 4648
2812 7131 3014 5295 7266 5180 4123 3792 4648 8009 4648 4816 1511 7036
 375 2221 5813 5698  168 7131 3792 5698 5698 2667 5698 4648 4171 6501
"""


@pytest.mark.skipif(
    not (
        os.path.isfile(os.environ.get("VQKD_CLIP_1X_CKPT", "")) and os.path.isfile(os.environ.get("VQKD_DEMO_JPEG", ""))
    ),
    reason="set VQKD_CLIP_1X_CKPT (vqkd_encoder_base_decoder_1x768x12_clip-d93179da.pth) and VQKD_DEMO_JPEG",
)
def test_golden_tokens_of_official_checkpoint() -> None:
    from PIL import Image

    image = Image.open(os.environ["VQKD_DEMO_JPEG"]).convert("RGB")
    scale = 256 / min(image.size)  # Resize(256): shorter side to 256, bicubic
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
    left, top = round((image.width - 224) / 2), round((image.height - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))  # CenterCrop(224)
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float().div(255)[None]
    tokens = load_official_vqkd(os.environ["VQKD_CLIP_1X_CKPT"]).encode(pixels)[0]
    expected = torch.tensor([int(t) for t in GOLDEN_TOKENS.split()])
    assert (tokens == expected).float().mean().item() >= 0.95
