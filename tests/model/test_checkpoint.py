import hashlib
import pickle
import struct

import pytest
import torch
from support.model_inputs import SMALL, make_inputs

import beit3_core
from beit3_core.checkpoint import (
    interpolate_vision_positions,
    load_released_state_dict,
    read_released_state_dict,
    released_state_dict,
)


def _outputs(model, config):
    image, text, padding, image_mask = make_inputs(config)
    with torch.no_grad():
        return model(image=image, text=text, text_padding_mask=padding, image_mask=image_mask)


def test_released_layout_round_trip(small_model, tmp_path):
    path = beit3_core.export_released_checkpoint(small_model, tmp_path / "beit3.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model"}
    assert all(k.startswith("beit3.") for k in raw["model"])
    assert "beit3.encoder.layers.0.ffn.A.fc1.weight" in raw["model"]
    assert "beit3.encoder.layers.1.self_attn.inner_attn_ln.B.bias" in raw["model"]

    loaded = beit3_core.load_released_checkpoint(path, "beit3_tiny", **SMALL).eval()
    assert torch.equal(_outputs(loaded, loaded.config), _outputs(small_model, small_model.config))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def _pretrained_file(tmp_path, with_task_head=True):
    torch.manual_seed(1)
    mdm = beit3_core.BEiT3ForMDM(beit3_core.get_config("beit3_tiny", **SMALL))
    state = dict(mdm.state_dict())
    if with_task_head:
        state["head.weight"] = torch.zeros(10, SMALL["embed_dim"])
    torch.save({"model": state, "epoch": 3}, tmp_path / "pretrained.pth")
    return mdm, tmp_path / "pretrained.pth"


def test_pretrained_heads_load_into_mdm_and_task_heads_are_reported(tmp_path, caplog):
    mdm, path = _pretrained_file(tmp_path)
    loaded = beit3_core.load_released_mdm(path, "beit3_tiny", **SMALL)
    for key, value in mdm.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    backbone = beit3_core.build_model("beit3_tiny", **SMALL)
    report = load_released_state_dict(backbone, read_released_state_dict(path))
    assert sorted(report.ignored_keys) == [
        "head.weight",
        "mim_head.bias",
        "mim_head.weight",
        "mlm_head.bias",
        "mlm_head.weight",
    ]
    with caplog.at_level("INFO"):
        beit3_core.load_released_checkpoint(path, "beit3_tiny", **SMALL)
    assert "ignored 5 unused keys (head, mim_head, mlm_head)" in caplog.text


def test_model_without_final_norm_ignores_it(tmp_path):
    _, path = _pretrained_file(tmp_path, with_task_head=False)
    backbone = beit3_core.build_model("beit3_tiny", **SMALL, normalize_output=False)
    report = load_released_state_dict(backbone, read_released_state_dict(path))
    assert {"beit3.encoder.layer_norm.A.weight", "beit3.encoder.layer_norm.B.bias"} <= set(report.ignored_keys)


def test_mdm_load_requires_the_heads(small_model, tmp_path):
    path = beit3_core.export_released_checkpoint(small_model, tmp_path / "backbone_only.pth")
    with pytest.raises(ValueError, match="missing keys: mim_head.bias"):
        beit3_core.load_released_mdm(path, "beit3_tiny", **SMALL)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("beit3.encoder.layers.1.ffn.B.fc2.bias"),
            "1 missing keys: beit3.encoder.layers.1.ffn.B.fc2.bias",
        ),
        (
            lambda s: s.__setitem__("beit3.encoder.layers.0.extra.weight", torch.zeros(1)),
            "1 unexpected keys: beit3.encoder.layers.0.extra.weight",
        ),
        (
            lambda s: s.__setitem__("beit3.text_embed.weight", torch.zeros(99, SMALL["embed_dim"])),
            r"beit3.text_embed.weight: checkpoint \(99, 64\) vs model \(100, 64\)",
        ),
        (
            lambda s: s.__setitem__("beit3.encoder.embed_positions.A.weight", torch.zeros(10, SMALL["embed_dim"])),
            "does not hold 3 \\+ a square grid",
        ),
    ],
)
def test_bad_checkpoint_names_the_problem(small_model, tmp_path, edit, message):
    state = released_state_dict(small_model)
    edit(state)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=message):
        beit3_core.load_released_checkpoint(tmp_path / "bad.pth", "beit3_tiny", **SMALL)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": Payload()}}, f)
    with pytest.raises(ValueError, match="weights-only"):
        read_released_state_dict(path)
    assert "unpickled" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_released_state_dict(tmp_path / "missing.pth")


def test_state_dict_under_module_key_loads(small_model, tmp_path):
    torch.save({"module": released_state_dict(small_model)}, tmp_path / "m.pth")
    loaded = beit3_core.load_released_checkpoint(tmp_path / "m.pth", "beit3_tiny", **SMALL).eval()
    assert torch.equal(_outputs(loaded, loaded.config), _outputs(small_model, small_model.config))


@pytest.mark.parametrize("img_size", [64, 96])
def test_resolution_change_interpolates_vision_positions(small_model, tmp_path, img_size):
    path = beit3_core.export_released_checkpoint(small_model, tmp_path / "beit3.pth")
    model = beit3_core.load_released_checkpoint(path, "beit3_tiny", **(SMALL | {"img_size": img_size})).eval()
    grid = img_size // SMALL["patch_size"]
    old = small_model.encoder.embed_positions.A.weight
    new = model.encoder.embed_positions.A.weight
    assert new.shape == (3 + grid * grid, SMALL["embed_dim"])
    assert torch.equal(new[:3], old[:3])  # unused rows and CLS are kept verbatim
    assert torch.equal(model.encoder.embed_positions.B.weight, small_model.encoder.embed_positions.B.weight)
    image, text, padding, _ = make_inputs(model.config)
    assert model(image=image, text=text, text_padding_mask=padding).shape[1] == 1 + grid * grid + text.shape[1]


def test_interpolation_is_bicubic_over_the_patch_grid():
    dim = 4
    constant = torch.cat([torch.randn(3, dim), torch.full((4, dim), 0.7)])  # 2x2 grid of one value
    torch.testing.assert_close(interpolate_vision_positions(constant, 36)[3:], torch.full((36, dim), 0.7))
    # A left-to-right ramp stays a ramp that is constant down each column and increasing along each row.
    ramp = torch.arange(4.0).repeat(4, 1).reshape(16, 1).expand(16, dim)
    out = interpolate_vision_positions(torch.cat([torch.zeros(3, dim), ramp]), 64)[3:, 0].reshape(8, 8)
    torch.testing.assert_close(out, out[:1].expand(8, 8))
    assert (out[0, 1:] - out[0, :-1] > 0).all()
    assert torch.equal(interpolate_vision_positions(ramp[:0].new_zeros(19, dim), 16), ramp[:0].new_zeros(19, dim))


@pytest.mark.parametrize("kind", ["backbone", "mdm"])
def test_safetensors_round_trip_rebuilds_the_model(tmp_path, kind):
    torch.manual_seed(0)
    config = beit3_core.get_config("beit3_tiny", **SMALL)
    model = beit3_core.BEiT3(config) if kind == "backbone" else beit3_core.BEiT3ForMDM(config, {"text": 2.0})
    path = beit3_core.save_checkpoint(model, tmp_path / "ckpt.safetensors", metadata={"step": "7"})
    loaded = beit3_core.load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if kind == "mdm":
        assert loaded.loss_weights["text"] == 2.0


def test_foreign_safetensors_file_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="other.safetensors: not a beit3-workflow"):
        beit3_core.load_checkpoint(tmp_path / "other.safetensors")


def test_same_weights_and_metadata_give_the_same_file_bytes(small_model, tmp_path):
    # Steps downstream of a checkpoint are keyed by its sha256: an identical rerun must not change it, although
    # safetensors itself writes the metadata entries in a different order from call to call.
    metadata = {f"field{i}": str(i) for i in range(8)}
    digests = set()
    for attempt in range(6):
        path = beit3_core.save_checkpoint(small_model, tmp_path / f"{attempt}.safetensors", metadata=metadata)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_length % 8 == 0  # tensor data stays 8-byte aligned
    assert beit3_core.checkpoint.read_checkpoint_metadata(path)["field7"] == "7"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("_tmp.")]
