"""ade20k end to end on the miniature ADE20K set: real Ray Train (2 CPU workers, gloo DDP), real MLflow, then
`beit3 evaluate` and `beit3 score` on what the run wrote, and the trivial baseline on the same split.

A micro backbone (64 wide, 2 layers) on 32 px crops keeps it under a minute; it checks the plumbing and the
official-format outputs. Learning is measured with the demo config (figures in the README).
"""

import json

import mlflow
import numpy as np
import pytest
import torch

from evaluation.dense.segmentation.baseline import majority_class_baseline
from evaluation.finetune import evaluate_checkpoint, run_finetune
from evaluation.metrics.segmentation import confusion_matrix, segmentation_metrics
from evaluation.miniature_dense import TUXPAINT_STAMPS, build_ade20k_miniature
from evaluation.tasks import get_task
from flows.cli import main as cli_main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="needs tuxpaint-stamps-default"),
]

MICRO = {"embed_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "patch_size": 16}
OPTIONS = {"img_scale": [64, 48], "ratio_range": [0.75, 1.5]}


def _config(root, folder) -> dict:
    return {
        "data": {"root": str(root), "batch_size": 4, "options": OPTIONS},
        "model": {"name": "beit3_tiny", "overrides": MICRO, "img_size": 32, "drop_path_rate": 0.0}
        | {"head_options": {"channels": 32, "aux_channels": 32}},
        "optim": {"lr": 1e-3, "layer_decay": 0.9, "warmup_epochs": 0.5, "grad_clip": 3.0},
        "run": {"epochs": 2, "log_every": 1, "storage_path": str(folder / "runs"), "mlflow_experiment": "ade-test"}
        | {"max_failures": 0},
    }


def test_finetune_evaluate_and_score(tmp_path, ray_local, capsys):
    root = build_ade20k_miniature(tmp_path / "mini", num_train=16, num_val=4, size=(48, 64))["root"]
    torch.manual_seed(0)
    result = run_finetune("ade20k", _config(root, tmp_path))
    metrics = result["metrics"]
    assert result["eval_split"] == "val" and metrics["num_images"] == 4
    assert all(0 <= metrics[key] <= 100 for key in ("mIoU", "aAcc", "mAcc"))

    client = mlflow.MlflowClient(tracking_uri=result["tracking_uri"])
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["beit3.task"] == "ade20k"
    for key in ("mIoU", "aAcc", "mAcc"):
        assert run.data.metrics[f"eval_{key}"] == pytest.approx(metrics[key])
    for key in ("loss", "decode_loss", "aux_loss", "pixel_acc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert history and all(np.isfinite(m.value) for m in history)
    assert json.loads(run.data.params["head_options"])["num_classes"] == 4
    assert [a.path for a in client.list_artifacts(run.info.run_id, "submission")] == [
        "submission/ade20k_val_submission.zip"
    ]

    # The submission scores to the run's numbers through `beit3 score`.
    args = [
        "score",
        "ade20k",
        "--predictions",
        result["submission"],
        "--annotations",
        str(root / "annotations/validation"),
    ]
    assert cli_main(args) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == pytest.approx({key: metrics[key] for key in ("mIoU", "aAcc", "mAcc")} | {"num_images": 4})

    # Evaluating the fine-tuned checkpoint again reproduces the metrics (deterministic test pipeline).
    again = evaluate_checkpoint("ade20k", result["checkpoint"], _config(root, tmp_path))
    assert again["metrics"]["mIoU"] == pytest.approx(metrics["mIoU"])

    # The trivial predictor on the same split: the majority class of the training pixels everywhere.
    task = get_task("ade20k")
    train, val = (task.dataset(split, root, None, 32, **OPTIONS) for split in ("train", "val"))
    counts = sum(np.bincount(train.label(s)[train.label(s) != 255], minlength=4) for s, _, _ in train.items)
    majority = int(np.argmax(counts))
    conf = sum(confusion_matrix(np.full_like(val.label(s), majority), val.label(s), 4) for s, _, _ in val.items)
    trivial = segmentation_metrics(conf)
    assert majority == 0  # the background photo covers most pixels
    assert trivial["mIoU"] == pytest.approx(trivial["aAcc"] / np.count_nonzero(conf.sum(axis=1)))
    baseline = majority_class_baseline(train, val)
    assert baseline["majority_class"] == "background"
    assert baseline["mIoU"] == pytest.approx(trivial["mIoU"]) and baseline["aAcc"] == pytest.approx(trivial["aAcc"])
