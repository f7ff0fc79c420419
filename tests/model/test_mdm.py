import pytest
import torch

import beit3_core
from beit3_core.mdm import MDMBatch, TextStream
from beit3_core.optim import build_adamw
from beit3_core.synthetic import SyntheticMDMData

TINY_MDM = dict(
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    ffn_dim=128,
    img_size=32,
    patch_size=8,
    vocab_size=200,
    visual_vocab_size=32,
)


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    config = beit3_core.get_config("beit3_tiny", **TINY_MDM)
    return beit3_core.BEiT3ForMDM(config), SyntheticMDMData(config, text_len=12, num_colors=8, seed=seed)


def test_loss_sums_per_kind_terms_and_reports_metrics():
    model, data = _model_and_data()
    out = model(data.batch(2, 3, 2))
    kinds = ("image", "text", "pair_image", "pair_text")
    torch.testing.assert_close(out["loss"], sum(out[f"loss/{k}"] for k in kinds))
    for kind in kinds:
        assert 0 <= out[f"accuracy/{kind}"] <= 1
        assert out[f"num_masked/{kind}"] > 0
    # At init the heads are near uniform: CE close to log(vocabulary).
    assert abs(out["loss/image"].item() - torch.log(torch.tensor(32.0)).item()) < 0.3
    assert abs(out["loss/text"].item() - torch.log(torch.tensor(200.0)).item()) < 0.3


def test_only_masked_positions_are_targets():
    model, data = _model_and_data()
    batch = data.batch(2, 0, 0)
    loss = model(batch)["loss"]
    batch.image.visual_tokens[~batch.image.image_mask] = 0  # unmasked targets carry no loss
    torch.testing.assert_close(model(batch)["loss"], loss)
    batch.image.visual_tokens[batch.image.image_mask] = 0
    assert (model(batch)["loss"] - loss).abs() > 1e-3


def test_loss_weights_scale_their_term():
    model, data = _model_and_data()
    batch = data.batch(0, 2, 0)
    base = model(batch)
    model.loss_weights["text"] = 3.0
    torch.testing.assert_close(model(batch)["loss"], 3 * base["loss/text"])
    with pytest.raises(ValueError, match="unknown MDM loss weight keys"):
        beit3_core.BEiT3ForMDM(model.config, {"video": 1.0})


def test_overfits_one_mixed_batch():
    model, data = _model_and_data()
    batch = data.batch(2, 2, 2)
    optimizer = build_adamw(model, lr=2e-3, weight_decay=0.0)
    first = model(batch)["loss"].item()
    for _ in range(150):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert out["loss"].item() < 0.05 * first, (first, out["loss"].item())
    for kind in ("image", "text", "pair_image", "pair_text"):
        assert out[f"accuracy/{kind}"] == 1.0, kind


def test_batch_without_streams_or_with_bad_targets_is_an_error():
    model, data = _model_and_data()
    with pytest.raises(ValueError, match="holds no stream"):
        model(MDMBatch())
    text = data.batch(0, 2, 0).text
    bad = TextStream(text.text, text.text_padding_mask, text.text_labels[:, :-1])
    with pytest.raises(ValueError, match="text_labels shape"):
        model(MDMBatch(text=bad))
