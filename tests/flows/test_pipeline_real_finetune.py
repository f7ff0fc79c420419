"""The `beit3-pipeline` flow with nothing stood in: real Prefect, Ray, Ray Train pretraining and fine-tuning, MLflow.

One benchmark (ImageNet-style classification on a miniature benchmark) fine-tunes the micro model that the DAG
pretrains, so the whole chain raw files -> shards -> MDM checkpoint -> fine-tuned task checkpoint -> results
runs as users run it; with `compare_scratch` the same fine-tune also runs from random initialisation, and the
unit's trivial baseline stands beside both. A COCO-style captioning fine-tune also scores its model on the NoCaps
miniature (`evaluate_also`), which has no training set of its own. The caching and rerun behaviour of the DAG is
covered in test_pipeline.py.
"""

import json
import os
from pathlib import Path

import mlflow
import pytest
from support.demo_layout import write_demo_layout
from support.raw_data import build_raw_dataset, tiny_preprocess_config

from beit3_core.checkpoint import read_checkpoint_metadata
from evaluation.finetune.weights import load_task_checkpoint
from evaluation.miniature import build_miniature_benchmarks
from flows.steps.tracking import PARENT_TAG as PARENT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, pipeline_config_writer, prefect_server, ray_local):
    from flows.pipeline import beit3_pipeline

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    root = tmp_path_factory.mktemp("real-pipeline")
    raw = build_raw_dataset(root / "raw")
    sources = [s for s in raw["sources"] if s["name"] in ("pairs", "images", "texts")]
    preprocess = tiny_preprocess_config(root, root / "unused-output", sources)
    sizes = dict(
        num_caption_images=12, num_test_images=2, num_nocaps_images=3, images_per_class=4, num_nlvr2_sets=(4, 2, 2)
    )
    tasks = build_miniature_benchmarks(write_demo_layout(root / "demo"), root / "mini", seed=0, **sizes)["tasks"]
    imagenet, coco = tasks["imagenet"], tasks["coco_captioning"]
    overrides = {
        "data": {"root": str(imagenet["root"]), "options": imagenet["options"], "batch_size": 4},
        "model": {"img_size": 32, "drop_path_rate": 0.0},
        "optim": {"lr": 2e-3, "warmup_epochs": 0.5},
        "run": {"epochs": 1, "num_workers": 1, "log_every": 2},
    }
    captioning = {
        "data": {"root": str(coco["root"]), "batch_size": 4},
        "model": {"img_size": 32, "drop_path_rate": 0.0},
        "run": {"epochs": 1, "num_workers": 1, "log_every": 2},
    }
    benchmarks = [
        {"task": "imagenet", "overrides": overrides},
        {"task": "coco_captioning", "evaluate_also": ["nocaps"], "overrides": captioning},
    ]
    config = pipeline_config_writer(root, preprocess, benchmarks, extra={"compare_scratch": True})
    return beit3_pipeline(str(config)) | {"imagenet_root": str(imagenet["root"]), "coco_root": str(coco["root"])}


def test_the_dag_fine_tunes_the_checkpoint_it_pretrained(real_run, prefect_states):
    states = prefect_states(real_run["flow_run_id"])
    assert states["pretrain"] == states["finetune[imagenet]"] == states["report"] == "Completed"
    assert states["finetune-scratch[imagenet]"] == "Completed"
    results = json.loads((Path(real_run["run_dir"]) / "results.json").read_text())
    entry = results["benchmarks"]["imagenet"]
    assert entry["status"] == "completed"
    assert 0 <= entry["metrics"]["acc1"] <= entry["metrics"]["acc5"] <= 100

    model, header = load_task_checkpoint(entry["checkpoint"])
    assert header["task"] == "imagenet"
    pretrained = json.loads(read_checkpoint_metadata(results["pretrain"]["checkpoint"])["config"])
    shape = ("embed_dim", "num_layers", "num_heads", "ffn_dim", "patch_size", "img_size", "vocab_size")
    assert {k: header["config"][k] for k in shape} == {k: pretrained[k] for k in shape}  # the micro model it pretrained
    assert pretrained["embed_dim"] == 64


def test_the_fine_tune_is_a_nested_mlflow_run_with_its_metrics(real_run):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(real_run['run_dir']) / '.state' / 'mlflow.db'}")
    parent = client.get_run(real_run["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    finetune = next(c for c in children if c.data.tags["beit3.step"] == "finetune[imagenet]")
    metrics = real_run["results"]["benchmarks"]["imagenet"]["metrics"]
    assert finetune.data.metrics["eval_acc1"] == pytest.approx(metrics["acc1"])
    assert finetune.data.tags["beit3.pretrain_run"] == real_run["results"]["pretrain"]["mlflow_run_id"]
    assert parent.data.metrics["imagenet/acc1"] == pytest.approx(metrics["acc1"])


def _expected_imagenet_baseline(root: Path) -> tuple[float, int]:
    """Majority class of train/ scored on val/, or chance when larger; counted from the folders here."""
    train = {c.name: len(list(c.iterdir())) for c in (root / "train").iterdir() if c.is_dir()}
    val = {c.name: len(list(c.iterdir())) for c in (root / "val").iterdir() if c.is_dir()}
    majority = min(train, key=lambda c: (-train[c], c))
    num_val = sum(val.values())
    return max(100.0 * val.get(majority, 0) / num_val, 100.0 / len(train)), num_val


def test_scratch_run_starts_from_random_weights_and_stands_beside_the_baseline(real_run, capsys):
    from beit3_core.checkpoint import read_state_dict
    from flows.cli import main

    run_dir = Path(real_run["run_dir"])
    results = json.loads((run_dir / "results.json").read_text())
    entry = results["benchmarks"]["imagenet"]
    scratch = entry["scratch"]
    assert scratch["status"] == "completed" and 0 <= scratch["metrics"]["acc1"] <= 100
    assert scratch["checkpoint"] != entry["checkpoint"] and Path(scratch["checkpoint"]).is_file()

    # The scratch run's initial backbone: the pretrained architecture, other weights.
    init = run_dir / "finetune-scratch" / "imagenet" / "random_init.safetensors"
    pretrained_path = results["pretrain"]["checkpoint"]
    assert read_checkpoint_metadata(init)["config"] == read_checkpoint_metadata(pretrained_path)["config"]
    random_init, pretrained = read_state_dict(init), read_state_dict(pretrained_path)
    shared = [k for k in random_init if k in pretrained and random_init[k].ndim == 2]
    assert len(shared) > 10
    assert all(not random_init[k].equal(pretrained[k]) for k in shared)

    # The baseline: the miniature's majority training class (or chance), on the split the model is scored on.
    expected, num_val = _expected_imagenet_baseline(Path(real_run["imagenet_root"]))
    baseline = entry["baseline"]
    assert baseline["metrics"]["acc1"] == pytest.approx(expected) and baseline["num_items"] == num_val
    p = expected / 100
    assert baseline["stderr"]["acc1"] == pytest.approx(100 * (p * (1 - p) / num_val) ** 0.5)
    se = baseline["stderr"]["acc1"]
    assert entry["margin"]["acc1"] == pytest.approx((entry["metrics"]["acc1"] - expected) / se)
    assert scratch["margin"]["acc1"] == pytest.approx((scratch["metrics"]["acc1"] - expected) / se)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / '.state' / 'mlflow.db'}")
    parent = client.get_run(real_run["mlflow_run_id"])
    assert parent.data.metrics["imagenet/scratch_acc1"] == pytest.approx(scratch["metrics"]["acc1"])
    assert parent.data.metrics["imagenet/baseline_acc1_stderr"] == pytest.approx(se)
    for run_id, kind in ((entry["mlflow_run_id"], "finetune"), (scratch["mlflow_run_id"], "finetune-scratch")):
        run = client.get_run(run_id)
        assert run.data.tags["beit3.init"] == kind and run.data.tags[PARENT] == parent.info.run_id
        assert run.data.metrics["baseline_acc1"] == pytest.approx(expected)

    assert main(["report", str(run_dir / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "scratch" in out and "baseline +- stderr" in out and f"{expected:.2f} +- {se:.2f}" in out
    assert "pretrain (MDM)" in out


def test_nocaps_is_scored_with_the_coco_captioner(real_run, prefect_states):
    from evaluation.tasks.karpathy import read_nocaps

    run_dir = Path(real_run["run_dir"])
    results = json.loads((run_dir / "results.json").read_text())
    captioning, nocaps = results["benchmarks"]["coco_captioning"], results["benchmarks"]["nocaps"]
    assert prefect_states(real_run["flow_run_id"])["finetune[coco_captioning]"] == "Completed"
    # The very checkpoint the captioning fine-tune wrote, scored on NoCaps' own (val) split with its scorer.
    assert nocaps["evaluated_from"] == "coco_captioning" and nocaps["init_checkpoint"] == captioning["checkpoint"]
    val = read_nocaps(Path(real_run["coco_root"]), "val")
    assert nocaps["metrics"]["num_images"] == nocaps["baseline"]["num_items"] == len(val)
    assert set(nocaps["metrics"]["domains"]) <= {"in-domain", "near-domain", "out-domain"}
    assert "CIDEr" in nocaps["metrics"] and "CIDEr" in nocaps["margin"]
    assert nocaps["scratch"]["evaluated_from"] == "coco_captioning"
    assert nocaps["scratch"]["init_checkpoint"] == captioning["scratch"]["checkpoint"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / '.state' / 'mlflow.db'}")
    run = client.get_run(nocaps["mlflow_run_id"])
    assert run.data.tags["beit3.step"] == "finetune[coco_captioning]->nocaps"
    assert run.data.tags[PARENT] == real_run["mlflow_run_id"]
    assert run.data.params["eval_split"] == "val" and "baseline_CIDEr" in run.data.metrics
