"""ITC tuning pieces: the InfoNCE loss by hand, global negatives across ranks, the released ITC key layout,
and the errors for bad input."""

import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
from support import itc_gather
from support.model_inputs import SMALL

from beit3_core import BEiT3, BEiT3ForITC, export_released_checkpoint, get_config, load_released_checkpoint
from beit3_core.checkpoint import load_checkpoint, load_released_itc, save_checkpoint
from beit3_core.itc import LOGIT_SCALE_INIT, contrastive_logits_loss
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.train.config import build_config
from beit3_core.train.launcher import resolve_model_config
from beit3_core.train.model_setup import build_pretraining_model

DIM = SMALL["embed_dim"]


def test_infonce_on_a_hand_computed_3x3_example():
    # Images e0, e1, e2; texts e0, e2, e1: text 0 matches its image, texts 1 and 2 are swapped. Scale e^ln2 = 2.
    image = torch.eye(3)
    text = torch.eye(3)[[0, 2, 1]]
    loss, logits_i2t, logits_t2i, labels = contrastive_logits_loss(image, text, torch.tensor(math.log(2.0)))
    # Row 0: logits (2, 0, 0), right one 2 -> -log(e^2 / (e^2 + 2)); rows 1 and 2: the right logit is 0 and one
    # wrong is 2 -> -log(1 / (e^2 + 2)). The matrix is symmetric, so text -> image is the same.
    e2 = math.e**2
    one_way = (math.log((e2 + 2) / e2) + 2 * math.log(e2 + 2)) / 3
    assert loss.item() == pytest.approx(one_way, abs=1e-6)
    assert logits_i2t.tolist() == [[2, 0, 0], [0, 0, 2], [0, 2, 0]] and labels.tolist() == [0, 1, 2]
    assert torch.equal(logits_t2i, logits_i2t.T)


def test_forward_metrics_and_logit_scale_init():
    torch.manual_seed(0)
    model = BEiT3ForITC(get_config("beit3_tiny", **SMALL))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) == pytest.approx(LOGIT_SCALE_INIT)
    assert not any(name.endswith("bias") for name, _ in model.vision_head.named_parameters())
    from beit3_core.mdm import MDMBatch, PairStream

    text = torch.randint(4, 90, (3, 6))
    text[:, 0] = 0
    pair = PairStream(
        torch.randn(3, 3, 32, 32),
        torch.zeros(3, 4, dtype=torch.bool),
        torch.zeros(3, 4, dtype=torch.long),
        text,
        torch.zeros(3, 6, dtype=torch.bool),
        torch.full((3, 6), -100),
    )
    out = model(MDMBatch(pair=pair))
    assert set(out) == {"loss", "accuracy/i2t", "accuracy/t2i", "logit_scale"}
    out["loss"].backward()
    assert model.logit_scale.grad is not None and model.vision_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image-text pairs"):
        model(MDMBatch())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_rank_on_the_same_global_batch(tmp_path):
    mp.spawn(itc_gather.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "distributed.pt", weights_only=True)
    single_loss, single_grads = itc_gather.loss_and_grads(rank=0, world=1)
    assert distributed["loss"] == pytest.approx(single_loss, abs=1e-5)
    for name, grad in single_grads.items():
        torch.testing.assert_close(distributed["grads"][name], grad, atol=1e-5, rtol=0, msg=name)


def _fake_released_itc(tmp_path, drop=()):
    """A released-layout ITC file built key by key: `beit3.*` backbone + the two projections + logit scale."""
    torch.manual_seed(1)
    backbone = BEiT3(get_config("beit3_tiny", **SMALL))
    state = {f"beit3.{k}": v for k, v in backbone.state_dict().items()}
    state |= {"vision_head.weight": torch.randn(DIM, DIM), "language_head.weight": torch.randn(DIM, DIM)}
    state |= {"logit_scale": torch.tensor(4.2)}
    for key in drop:
        del state[key]
    path = tmp_path / "beit3_tiny_itc_patch16_224.pth"
    torch.save({"model": state}, path)
    return path, state


def test_released_itc_layout_loads_strictly_and_round_trips(tmp_path):
    path, state = _fake_released_itc(tmp_path)
    model = load_released_itc(path, "beit3_tiny", **SMALL)
    assert model.logit_scale.item() == pytest.approx(4.2)
    torch.testing.assert_close(model.vision_head.weight, state["vision_head.weight"])
    exported = export_released_checkpoint(model, tmp_path / "out.pth")
    again = torch.load(exported, weights_only=True)["model"]
    assert set(again) == set(state)
    for key, value in state.items():
        assert torch.equal(again[key], value), key
    # The plain loader takes the backbone and reports the heads as unused.
    backbone = load_released_checkpoint(exported, "beit3_tiny", **SMALL)
    assert torch.equal(backbone.state_dict()["encoder.layer_norm.A.weight"], state["beit3.encoder.layer_norm.A.weight"])
    # Our own format keeps the kind.
    ours = load_checkpoint(save_checkpoint(model, tmp_path / "itc.safetensors"))
    assert isinstance(ours, BEiT3ForITC) and ours.logit_scale.item() == pytest.approx(4.2)


def test_released_itc_file_without_a_head_is_named(tmp_path):
    path, _ = _fake_released_itc(tmp_path, drop=("logit_scale",))
    with pytest.raises(ValueError, match="missing keys: logit_scale"):
        load_released_itc(path, "beit3_tiny", **SMALL)


def test_itc_run_starts_from_an_mdm_checkpoint_with_fresh_projections(tmp_path):
    torch.manual_seed(2)
    mdm = BEiT3ForMDM(get_config("beit3_tiny", **SMALL))
    source = save_checkpoint(mdm, tmp_path / "mdm.safetensors")
    cfg = build_config("itc_tiny_cpu", {"model": {"init_checkpoint": str(source)}})
    model = build_pretraining_model(cfg, mdm.config.to_dict())
    assert isinstance(model, BEiT3ForITC)
    for key, value in mdm.beit3.state_dict().items():
        assert torch.equal(model.beit3.state_dict()[key], value), key
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT)


def test_mdm_loss_weights_come_from_the_config():
    config = get_config("beit3_tiny", **SMALL).to_dict()
    cfg = build_config("tiny_cpu", {"model": {"loss_weights": {"text": 2.5}}})
    model = build_pretraining_model(cfg, config)
    assert model.loss_weights == {"image": 1.0, "text": 2.5, "pair_image": 1.0, "pair_text": 1.0}
    with pytest.raises(ValueError, match="unknown MDM loss weight keys"):
        build_pretraining_model(build_config("tiny_cpu", {"model": {"loss_weights": {"txt": 2.0}}}), config)


def test_itc_on_shards_without_pairs_is_an_error(tmp_path):
    shards = [{"name": "s0", "tar": "s0.tar", "counts": {"image": 5, "text": 7}}]
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": shards}))
    cfg = build_config("itc_tiny_cpu", {"data": {"shards": str(tmp_path)}})
    with pytest.raises(ValueError, match="ITC tuning needs image-text pairs.*none of the 1 shards"):
        resolve_model_config(cfg)


def test_unknown_objective_is_an_error():
    with pytest.raises(ValueError, match="model.objective"):
        build_config("tiny_cpu", {"model": {"objective": "clip"}})


def test_retrieval_fine_tune_keeps_the_itc_projections_and_scale(tmp_path):
    from evaluation.finetune.weights import build_task_model, heads_to_copy, initialise
    from evaluation.tasks import get_task

    task = get_task("coco_retrieval")
    path, state = _fake_released_itc(tmp_path)
    itc = save_checkpoint(load_released_itc(path, "beit3_tiny", **SMALL), tmp_path / "itc.safetensors")
    torch.manual_seed(3)
    mdm = save_checkpoint(BEiT3ForMDM(get_config("beit3_tiny", **SMALL)), tmp_path / "mdm.safetensors")
    for source, copied in ((itc, True), (mdm, False)):
        torch.manual_seed(0)
        model = build_task_model(task, "beit3_tiny", SMALL, {})
        fresh = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("beit3.")}
        heads = initialise(model, source, heads_to_copy(task))
        assert heads == (sorted(fresh) if copied else [])
        for key in fresh:
            expected = state[key] if copied else fresh[key]
            torch.testing.assert_close(model.state_dict()[key], expected, rtol=0, atol=0, msg=key)
