"""coco_detection end to end on the miniature COCO instances set: real Ray Train (2 CPU workers, gloo DDP), real
MLflow, pycocotools scores; then `beit3 evaluate` and `beit3 score` on what the run wrote.

A micro backbone (64 wide, 2 layers) at 64 px with shrunk heads keeps it under a minute; it shows the plumbing
and the official-format outputs, not learning (the README's figures come from the demo config).
"""

import json

import mlflow
import pytest
import torch

from evaluation.finetune import evaluate_checkpoint, run_finetune
from evaluation.miniature_coco import build_coco_instances_miniature
from evaluation.miniature_dense import TUXPAINT_STAMPS
from flows.cli import main as cli_main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="needs tuxpaint-stamps-default"),
]

MICRO = {"embed_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "patch_size": 16}
DETECTOR = {
    "out_channels": 32,
    "rpn": {"anchor_sizes": [8, 16, 32, 64, 128], "pre_nms_topk": [200, 200], "post_nms_topk": [64, 50]},
    "roi_heads": {"batch_size_per_image": 64, "conv_dim": 16, "num_box_convs": 1, "fc_dim": 64, "num_mask_convs": 1}
    | {"canonical_box_size": 56},
}


def _config(root, folder) -> dict:
    return {
        "data": {"root": str(root), "batch_size": 4, "eval_split": "val", "options": {"scale_range": [0.8, 1.2]}},
        "model": {"name": "beit3_tiny", "overrides": MICRO, "img_size": 64, "drop_path_rate": 0.0}
        | {"head_options": {"detector": DETECTOR}},
        "optim": {"lr": 1e-3, "layer_decay": 0.9, "warmup_epochs": 0.5, "grad_clip": 3.0},
        "run": {"epochs": 2, "log_every": 1, "storage_path": str(folder / "runs"), "mlflow_experiment": "det-test"},
    }


def test_finetune_evaluate_and_score(tmp_path, ray_local, capsys):
    root = build_coco_instances_miniature(tmp_path / "mini", num_train=8, num_val=4)["root"]
    torch.manual_seed(0)
    result = run_finetune("coco_detection", _config(root, tmp_path))
    metrics = result["metrics"]
    assert result["eval_split"] == "val" and metrics["num_images"] == 4
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert -100 <= metrics[f"bbox_{name}"] <= 100 and -100 <= metrics[f"segm_{name}"] <= 100

    client = mlflow.MlflowClient(tracking_uri=result["tracking_uri"])
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["beit3.task"] == "coco_detection"
    assert run.data.metrics["eval_bbox_AP"] == pytest.approx(metrics["bbox_AP"])
    assert run.data.metrics["eval_segm_AP"] == pytest.approx(metrics["segm_AP"])
    for key in ("loss", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"):
        history = client.get_metric_history(run.info.run_id, key)
        assert history and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    assert json.loads(run.data.params["head_options"])["num_classes"] == 3

    # The submission is an official result file: `beit3 score` reproduces the run's numbers from it.
    annotations = root / "annotations" / "instances_val2017.json"
    argv = ["score", "coco_detection", "--predictions", result["submission"], "--annotations", str(annotations)]
    capsys.readouterr()
    assert cli_main(argv) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["bbox_AP"] == pytest.approx(metrics["bbox_AP"]) and scored["segm_AP"] == pytest.approx(
        metrics["segm_AP"]
    )
    again = evaluate_checkpoint("coco_detection", result["checkpoint"], _config(root, tmp_path))
    assert again["metrics"]["bbox_AP"] == pytest.approx(metrics["bbox_AP"])
