"""Fine-tuning + evaluation end to end: real Ray Train (2 CPU workers, gloo DDP), real MLflow, miniature benchmarks.

The benchmarks are built by `evaluation.miniature` from a small generated demo layout; the backbone is a micro
BEiT-3 (64 wide, 2 layers, 32 px) with a SentencePiece model trained here. One local Ray serves the module
(`run_finetune` reuses an initialised Ray). Worker kills and resumption are covered by the pretraining tests.
"""

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from support.demo_layout import CLASSES, NOUNS, write_demo_layout

from beit3_core.checkpoint import save_checkpoint
from beit3_core.config import get_config
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.text_tokenizer import train_sentencepiece
from evaluation.finetune import build_finetune_config, evaluate_checkpoint, load_finetune_config, run_finetune
from evaluation.finetune.weights import build_task_model, heads_to_copy, initialise, load_task_checkpoint
from evaluation.miniature import build_miniature_benchmarks
from evaluation.tasks import get_task
from evaluation.tasks.imagenet import index_split
from flows.cli import main as cli_main

pytestmark = pytest.mark.slow

MICRO = {"embed_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "patch_size": 16}
EXPERIMENT = "finetune-test"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """Miniature benchmarks, a tokenizer trained on their texts and a micro MDM checkpoint to start from."""
    folder = tmp_path_factory.mktemp("finetune")
    demo = write_demo_layout(folder / "demo")
    sizes = dict(
        num_caption_images=24, num_test_images=4, num_nocaps_images=5, images_per_class=5, num_nlvr2_sets=(6, 3, 3)
    )
    tasks = build_miniature_benchmarks(demo, folder / "mini", seed=0, **sizes)["tasks"]
    sentences = [f"a {n}. is this a {n}? what is shown in the picture? an emoji of symbol {n}." for n in NOUNS]
    sentences += [f"the left image shows a {c}. both images show a {c}." for c in CLASSES]
    spm = train_sentencepiece(sentences * 3, folder / "spm" / "m", 80, hard_vocab_limit=False)
    torch.manual_seed(0)
    mdm = BEiT3ForMDM(get_config("beit3_tiny", **MICRO, img_size=32, vocab_size=96, visual_vocab_size=16))
    pretrained = save_checkpoint(mdm, folder / "pretrained.safetensors")
    return {"folder": folder, "tasks": tasks, "tokenizer": spm, "pretrained": pretrained}


def _config(bench: dict, task: str, batch_size: int = 4, **run) -> dict:
    entry = bench["tasks"][task]
    data = {"root": str(entry["root"]), "options": entry["options"], "tokenizer": str(bench["tokenizer"])}
    return {
        "data": data | {"batch_size": batch_size},
        "model": {"name": "beit3_tiny", "overrides": MICRO, "img_size": 32, "drop_path_rate": 0.0},
        "optim": {"lr": 2e-3, "layer_decay": 0.9, "warmup_epochs": 0.5, "grad_clip": 3.0, "head_lr_scale": 1.0},
        "run": {
            "epochs": 2,
            "log_every": 2,
            "storage_path": str(bench["folder"] / "runs"),
            "mlflow_experiment": EXPERIMENT,
        }
        | run,
    }


def _finetune(bench: dict, task: str, **run) -> dict:
    return run_finetune(task, _config(bench, task, **run), init_checkpoint=str(bench["pretrained"]))


def _run(result: dict):
    client = mlflow.MlflowClient(tracking_uri=result["tracking_uri"])
    return client, client.get_run(result["mlflow_run_id"])


def _check_run(result: dict, task: str, metric: str) -> None:
    client, run = _run(result)
    assert run.info.status == "FINISHED" and run.data.tags["beit3.task"] == task
    params = run.data.params
    assert params["task"] == task and params["run.epochs"] == "2" and params["data.batch_size"] == "4"
    assert json.loads(params["backbone"])["embed_dim"] == 64 and params["model.init_checkpoint"].endswith(
        "pretrained.safetensors"
    )
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    assert {m.step for m in history} >= {2}
    assert f"eval_{metric}" in run.data.metrics
    assert run.data.metrics[f"eval_{metric}"] == pytest.approx(result["metrics"][metric])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"finetune_config.yaml", "submission"} <= artifacts
    submitted = [a.path for a in client.list_artifacts(run.info.run_id, "submission")]
    assert submitted == [f"submission/{Path(result['submission']).name}"]
    assert Path(result["submission"]).is_file() and Path(result["checkpoint"]).is_file()
    model, header = load_task_checkpoint(result["checkpoint"])
    assert header["task"] == task and model.beit3.config.embed_dim == 64


def _initial_model(bench: dict, task: str, checkpoint: str) -> torch.nn.Module:
    """The model the training loop starts from: heads drawn right after `torch.manual_seed(run.seed)`, then the
    backbone (and the heads the task copies) loaded from the init checkpoint."""
    cfg = build_finetune_config(task, _config(bench, task))
    _, header = load_task_checkpoint(checkpoint)
    backbone = {k: v for k, v in header["config"].items() if k != "normalize_output"}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        model = build_task_model(get_task(task), header["backbone_name"], backbone, header["head_options"])
    initialise(model, bench["pretrained"], heads_to_copy(get_task(task)))
    return model


def _change_beyond_decay(tuned: dict, initial: dict, prefix: str) -> float:
    """||dw - proj_w0(dw)|| / ||w0|| summed over the tensors named `prefix*`: the relative change of the weights
    that is not a rescaling of the initial ones. Weight decay without gradient steps only rescales (0 here)."""
    names = [name for name in initial if name.startswith(prefix)]
    orthogonal, norm = 0.0, 0.0
    for name in names:
        w0 = initial[name].double().flatten()
        delta = tuned[name].double().flatten() - w0
        if w0.any():  # zero-initialised tensors (biases) have nothing to rescale: all their change counts
            delta -= (delta @ w0) / (w0 @ w0) * w0
        orthogonal, norm = orthogonal + float(delta @ delta), norm + float(w0 @ w0)
    return math.sqrt(orthogonal / norm)


def _assert_weights_moved(bench: dict, result: dict) -> None:
    """The fine-tuned ImageNet model differs clearly from the one the loop started from: the backbone by more
    than a rescaling (what weight decay alone would do), the head (initialised 1000x shrunk) far beyond its
    initial size."""
    tuned, _ = load_task_checkpoint(result["checkpoint"])
    tuned_state = tuned.state_dict()
    initial_state = _initial_model(bench, "imagenet", result["checkpoint"]).state_dict()
    assert initial_state.keys() == tuned_state.keys()
    backbone = _change_beyond_decay(tuned_state, initial_state, "beit3.")
    head = _change_beyond_decay(tuned_state, initial_state, "head.")
    assert backbone > 1e-3 and head > 10, f"backbone {backbone:.2e}, head {head:.2e}"


@pytest.fixture(scope="module")
def imagenet_run(bench, ray_local):
    return _finetune(bench, "imagenet")


def test_imagenet(bench, imagenet_run):
    result = imagenet_run
    metrics = result["metrics"]
    assert result["eval_split"] == "val" and metrics["num_images"] == 6
    assert 0 <= metrics["acc1"] <= metrics["acc5"] <= 100
    _check_run(result, "imagenet", "acc1")
    ranked = json.loads(Path(result["submission"]).read_text())
    assert len(ranked) == 6 and all(len(r) == 5 for r in ranked.values())
    # Evaluating the fine-tuned checkpoint again reproduces the metrics (deterministic eval transform).
    again = evaluate_checkpoint("imagenet", result["checkpoint"], _config(bench, "imagenet"))
    assert again["metrics"]["acc1"] == metrics["acc1"]
    _assert_weights_moved(bench, result)


def test_killed_worker_resumes_from_the_epoch_checkpoint_with_identical_weights(bench, imagenet_run, tmp_path):
    """A real SIGKILL of rank 1 in the second epoch: Ray restarts the workers from the epoch-1 checkpoint and the
    fine-tuned weights equal those of the uninterrupted run (fixed seed, CPU)."""
    train_items = len(index_split(bench["tasks"]["imagenet"]["root"], "train"))
    steps_per_epoch = math.ceil(train_items / 2) // 2  # 2 ranks, 2 images per rank and step, last batch dropped
    marker = tmp_path / "killed"
    fault = {"kill_rank": 1, "at_step": steps_per_epoch + 2, "marker": str(marker)}
    result = _finetune(bench, "imagenet", fault_injection=fault, storage_path=str(tmp_path / "runs"))
    assert marker.read_text() == f"killed rank 1 at step {steps_per_epoch + 2}\n"  # the kill really happened
    resumed, _ = load_task_checkpoint(result["checkpoint"])
    reference, _ = load_task_checkpoint(imagenet_run["checkpoint"])
    expected = reference.state_dict()
    diffs = [(value - expected[name]).abs().max().item() for name, value in resumed.state_dict().items()]
    assert max(diffs) <= 1e-6
    assert result["metrics"] == imagenet_run["metrics"]
    _assert_weights_moved(bench, result)  # identical to a run that did train


def _cli(argv: list[str], capsys) -> dict:
    """Run `beit3 ...` in this process (reusing its Ray); what it printed, keyed as `run_finetune` returns it."""
    assert cli_main(argv) == 0
    metrics, where, submission, mlflow_line = capsys.readouterr().out.splitlines()[:4]
    split, checkpoint = where.split(" split; checkpoint: ")
    _, _, run_id, _, uri = mlflow_line.split()
    return {
        "metrics": json.loads(metrics),
        "eval_split": split,
        "checkpoint": checkpoint,
        "submission": submission.removeprefix("submission: "),
        "mlflow_run_id": run_id,
        "tracking_uri": uri,
    }


def test_coco_retrieval_through_the_cli(bench, ray_local, tmp_path, capsys):
    config = _config(bench, "coco_retrieval", epochs=1) | {"task": "coco_retrieval"}
    path = tmp_path / "retrieval.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["finetune", "coco_retrieval", str(path), "--set", "run.epochs=2", "--init", str(bench["pretrained"])]
    result = _cli(argv, capsys)
    metrics = result["metrics"]
    assert result["eval_split"] == "test" and metrics["num_images"] == 4 and metrics["num_texts"] == 4
    for key in ("tr_r1", "tr_r5", "ir_r1", "ir_r5", "average_score"):
        assert 0 <= metrics[key] <= 100
    assert metrics["tr_r5"] == 100.0  # 4 candidates: recall@5 is clamped to all of them
    _check_run(result, "coco_retrieval", "average_score")


def test_evaluate_cli_zero_shot_from_pretrained(bench, tmp_path, capsys):
    """`beit3 evaluate` on a backbone checkpoint (zero-shot retrieval: no training, heads at init)."""
    config = _config(bench, "flickr30k_retrieval") | {"task": "flickr30k_retrieval"}
    path = tmp_path / "flickr.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_finetune_config(path).model.img_size == 32
    result = _cli(["evaluate", "flickr30k_retrieval", str(bench["pretrained"]), "--config", str(path)], capsys)
    assert result["eval_split"] == "test" and 0 <= result["metrics"]["average_score"] <= 100
    _, run = _run(result)
    assert run.info.status == "FINISHED" and run.data.tags["beit3.step"] == "evaluate"
    assert run.data.metrics["eval_average_score"] == pytest.approx(result["metrics"]["average_score"])
    assert run.data.params["checkpoint"] == str(bench["pretrained"])
    assert Path(result["submission"]).is_file()


def test_pipeline_style_config(bench):
    """What the pipeline's benchmark step passes: flat keys over a `config:` YAML."""
    path = bench["folder"] / "vqa.yaml"
    config = _config(bench, "vqav2") | {"task": "vqav2"}
    path.write_text(yaml.safe_dump(config))
    flat = {"config": str(path), "epochs": 1, "output_dir": "/out", "mlflow_experiment": "pipeline"}
    cfg = build_finetune_config("vqav2", flat)
    assert (cfg.run.epochs, cfg.run.output_dir, cfg.run.mlflow_experiment) == (1, "/out", "pipeline")
    assert cfg.data.options["min_answer_count"] == 1 and cfg.optim.lr == 2e-3
    assert cfg.optim.betas == (0.9, 0.98) and cfg.eval_split == "val"  # from the released VQAv2 recipe
    with pytest.raises(ValueError, match="ambiguous"):
        build_finetune_config("vqav2", {"name": "x"})
    with pytest.raises(ValueError, match="not 'imagenet'"):
        build_finetune_config("imagenet", flat)


@pytest.mark.parametrize(
    ("task", "metric", "split", "low", "high"),
    [
        ("nlvr2", "accuracy", "test", 0, 100),
        ("vqav2", "overall", "val", 0, 100),
        ("coco_captioning", "CIDEr", "test", 0, 10),  # pycocoevalcap's scale: CIDEr-D lies in [0, 10]
    ],
)
def test_other_tasks(bench, ray_local, task, metric, split, low, high):
    result = _finetune(bench, task)
    assert result["eval_split"] == split
    assert low <= result["metrics"][metric] <= high
    _check_run(result, task, metric)
