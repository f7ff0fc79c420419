"""ITC tuning end to end: `beit3 itc` on the real Ray Train (2 CPU workers, gloo DDP) from an MDM checkpoint."""

import os
import subprocess
import sys

import mlflow
import pytest
import torch
import yaml
from support.model_inputs import micro_pretrain_overrides
from support.shards import build_test_shards

from beit3_core import BEiT3ForITC, load_released_checkpoint
from beit3_core.checkpoint import load_checkpoint, save_checkpoint
from beit3_core.config import BEiT3Config
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.train.config import build_config
from beit3_core.train.launcher import resolve_model_config

pytestmark = pytest.mark.slow

STEPS = 8


def test_itc_run_on_ray_train(tmp_path):
    shards = build_test_shards(tmp_path / "shards")
    micro = micro_pretrain_overrides(loader_workers=0, warmup_steps=2)
    model_config, _ = resolve_model_config(build_config("tiny_cpu", micro | {"data": {"shards": str(shards)}}))
    torch.manual_seed(0)
    mdm = BEiT3ForMDM(BEiT3Config(**model_config))
    source = save_checkpoint(mdm, tmp_path / "mdm.safetensors")
    storage = tmp_path / "runs"
    config = {
        "recipe": "itc_tiny_cpu",
        "model": micro["model"],
        "data": {"shards": str(shards), "pairs_per_step": 6, "pair_text_len": 8, "num_workers": 0},
        "run": {"steps": STEPS, "checkpoint_every": 4, "log_every": 2, "storage_path": str(storage)},
    }
    path = tmp_path / "itc.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "itc", str(path), "--init", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "in-batch retrieval accuracy i2t" in out.stdout and "chance 0.167" in out.stdout

    (final,) = storage.glob("itc-*/final")
    model = load_checkpoint(final / "model.safetensors")
    assert isinstance(model, BEiT3ForITC)
    # The backbone moved away from the MDM weights; the released-layout export holds the ITC keys.
    start = mdm.beit3.state_dict()["encoder.layers.0.ffn.A.fc1.weight"]
    assert not torch.equal(model.beit3.state_dict()["encoder.layers.0.ffn.A.fc1.weight"], start)
    released = torch.load(final / "model_released_layout.pth", weights_only=True)["model"]
    assert {"vision_head.weight", "language_head.weight", "logit_scale"} <= set(released)
    assert not any(k.startswith(("mim_head", "mlm_head")) for k in released)
    shape = micro["model"]["overrides"] | {"vocab_size": model.config.vocab_size}
    load_released_checkpoint(final / "model_released_layout.pth", "beit3_tiny", **shape)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("beit3-itc").experiment_id)
    assert run.info.status == "FINISHED" and run.data.tags["beit3.step"] == "itc"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(2, STEPS + 1, 2))
    for name in ("accuracy_i2t", "accuracy_t2i", "logit_scale", "grad_norm", "final_accuracy_i2t", "final_chance_t2i"):
        assert name in run.data.metrics, name
