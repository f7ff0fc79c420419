"""The DAG's ITC and zero-shot steps: pretrain -> itc -> zeroshot[flickr30k_zeroshot] -> report, and a retrieval
fine-tune started from the ITC checkpoint (`init: itc`), with the real Prefect, Ray Train, MLflow and evaluation;
cached and rerun like the other steps; a leaky test split fails."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image
from support.model_inputs import micro_pretrain_overrides
from support.raw_data import build_raw_dataset, caption, image_bytes, tiny_preprocess_config

pytestmark = pytest.mark.slow

UNIT = "flickr30k_zeroshot"
RETRIEVAL = "finetune[flickr30k_retrieval]"
STEPS = {"ingest[pairs]", "ingest[images]", "ingest[texts]", "preprocess", "pretrain", "itc", f"zeroshot[{UNIT}]"}
STEPS |= {RETRIEVAL}
ITC_OVERRIDES = {
    "model": micro_pretrain_overrides(loader_workers=0, warmup_steps=1)["model"],
    "data": {"pairs_per_step": 4, "pair_text_len": 8, "num_workers": 0},
    "run": {"steps": 2, "checkpoint_every": 2, "log_every": 1, "num_workers": 1, "max_failures": 0},
}


def _run(config: Path, **selection) -> dict:
    from flows.pipeline import beit3_pipeline

    return beit3_pipeline(str(config), **selection)


def _karpathy(root: Path, images: list[tuple[bytes, str]], splits: list[str] | None = None) -> Path:
    (root / "flickr30k-images").mkdir(parents=True)
    entries = []
    for imgid, (data, text) in enumerate(images):
        filename = f"{1000000 + imgid}.jpg"
        (root / "flickr30k-images" / filename).write_bytes(data)
        sentence = {"raw": text, "tokens": text.split(), "imgid": imgid, "sentid": imgid}
        split = splits[imgid] if splits else "test"
        entries.append({"filename": filename, "imgid": imgid, "split": split, "sentids": [], "sentences": [sentence]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return root


def _checker(period: int) -> bytes:
    import io

    grid = (np.indices((40, 48)).sum(0) // period % 2 * 200).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([grid, grid // 2, 255 - grid], -1)).save(buffer, format="PNG")
    return buffer.getvalue()


def _config(root: Path, preprocess: Path, writer, karpathy: Path, name: str, benchmarks: list) -> Path:
    path = writer(root, preprocess, benchmarks, name=name)
    config = yaml.safe_load(path.read_text())
    config["itc"] = {"recipe": "itc_tiny_cpu", "overrides": ITC_OVERRIDES}
    config["zeroshot"] = [{"unit": UNIT, "root": str(karpathy), "batch_size": 2, "text_len": 16}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pipeline_config_writer):
    root = tmp_path_factory.mktemp("pipeline_itc")
    raw = build_raw_dataset(root / "raw")
    sources = [s for s in raw["sources"] if s["name"] in ("pairs", "images", "texts")]
    preprocess = tiny_preprocess_config(root, root / "unused-output", sources)
    clean = _karpathy(root / "clean", [(_checker(p), f"a checkered square number {p}") for p in (3, 5, 7)])
    # Sample 5 of the raw `pairs` tar (its picture and its caption), re-encoded as a benchmark copy would be.
    leaky = _karpathy(root / "leaky", [(_checker(4), "a checkered square"), (image_bytes(5, fmt="JPEG"), caption(5))])
    periods, splits = (2, 3, 4, 5, 6, 7), ["train"] * 4 + ["test"] * 2
    retrieval = _karpathy(root / "retrieval", [(_checker(p), f"squares of {p} pixels") for p in periods], splits)
    overrides = {
        "data": {"root": str(retrieval), "batch_size": 2, "options": {"text_len": 16}},
        "model": {"img_size": 32, "drop_path_rate": 0.0},
        "run": {"epochs": 1, "num_workers": 1, "log_every": 1},
    }
    benchmarks = [{"task": "flickr30k_retrieval", "init": "itc", "overrides": overrides}]
    config = _config(root, preprocess, pipeline_config_writer, clean, "pipeline.yaml", benchmarks)
    return root, config, _config(root, preprocess, pipeline_config_writer, leaky, "leaky.yaml", [])


@pytest.fixture(scope="module")
def first_run(prefect_server, ray_local, workspace):
    return _run(workspace[1])


def test_first_run_tunes_and_evaluates_zero_shot(first_run, prefect_states):
    assert prefect_states(first_run["flow_run_id"]) == {label: "Completed" for label in STEPS | {"report"}}
    results = json.loads((Path(first_run["run_dir"]) / "results.json").read_text())
    metrics = results["benchmarks"][UNIT]["metrics"]
    assert metrics["num_images"] == 3 and metrics["img_size"] == 224
    # Three images with one caption each: R@5 covers all of them, R@1 is a whole number of hits out of three.
    assert metrics["tr_r5"] == metrics["ir_r5"] == 100.0
    assert metrics["tr_r1"] * 3 / 100 == pytest.approx(round(metrics["tr_r1"] * 3 / 100))
    # Zero-shot evaluates the ITC step's model, never the MDM checkpoint it was tuned from.
    (itc_final,) = (Path(first_run["run_dir"]) / "itc").glob("itc-*/final/model.safetensors")
    assert results["benchmarks"][UNIT]["checkpoint"] == str(itc_final) != results["pretrain"]["checkpoint"]
    # Its trivial baseline: a random ranking of the same three images, one caption each -> R@1 = 1/3.
    baseline = results["benchmarks"][UNIT]["baseline"]
    assert [baseline["metrics"][m] for m in ("tr_r1", "ir_r1")] == pytest.approx([100 / 3, 100 / 3])
    assert baseline["stderr"]["ir_r1"] == pytest.approx(100 * (1 / 3 * 2 / 3 / 3) ** 0.5)
    margin = results["benchmarks"][UNIT]["margin"]["tr_r1"]
    assert margin == pytest.approx((metrics["tr_r1"] - 100 / 3) / baseline["stderr"]["tr_r1"])
    itc_dir = Path(first_run["run_dir"]) / "itc"
    (released,) = itc_dir.glob("itc-*/final/model_released_layout.pth")
    uri = f"sqlite:///{Path(first_run['run_dir']) / '.state' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(first_run["mlflow_run_id"])
    assert parent.data.metrics[f"{UNIT}/tr_r1"] == metrics["tr_r1"]
    assert parent.data.metrics[f"{UNIT}/baseline_ir_r1"] == pytest.approx(100 / 3)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    steps = {c.data.tags["beit3.step"] for c in children}
    assert {"pretrain", "itc", f"zeroshot[{UNIT}]"} <= steps
    itc_run = next(c for c in children if c.data.tags["beit3.step"] == "itc")
    assert "loss" in itc_run.data.metrics and "final_chance_i2t" in itc_run.data.metrics
    # The retrieval fine-tune started from the ITC step's model, not from the MDM checkpoint.
    retrieval = results["benchmarks"]["flickr30k_retrieval"]
    assert retrieval["init_checkpoint"] == str(itc_final) != results["pretrain"]["checkpoint"]
    assert retrieval["metrics"]["num_images"] == 2
    tuned = next(c for c in children if c.data.tags["beit3.step"] == RETRIEVAL)
    assert tuned.data.tags["beit3.itc_run"] == itc_run.info.run_id and "beit3.pretrain_run" not in tuned.data.tags


def test_unchanged_rerun_and_selections_are_cache_hits(first_run, workspace, prefect_states):
    config = workspace[1]
    assert prefect_states(_run(config)["flow_run_id"]) == {label: "Cached" for label in STEPS | {"report"}}
    assert prefect_states(_run(config, only=["itc"])["flow_run_id"]) == {"itc": "Cached"}
    # The fine-tune that starts from ITC reads the ITC step's output from the ledger when run alone.
    assert prefect_states(_run(config, only=["finetune"])["flow_run_id"]) == {RETRIEVAL: "Cached"}
    after = {"itc": "Cached", f"zeroshot[{UNIT}]": "Cached", RETRIEVAL: "Cached", "report": "Cached"}
    assert prefect_states(_run(config, from_step="itc")["flow_run_id"]) == after


def test_leaky_test_split_fails_the_step_naming_the_records(first_run, workspace):
    from flows.steps.runner import StepFailed

    with pytest.raises(StepFailed) as failure:
        _run(workspace[2], only=[f"zeroshot:{UNIT}"])
    message = str(failure.value)
    assert f"step zeroshot[{UNIT}] failed" in message and "is not zero-shot: 2 test records" in message
    assert "image flickr30k-images/1000001.jpg = pairs/part-00000.tar#000005" in message
    assert f"caption flickr30k-images/1000001.jpg: '{caption(5)}' = pairs/part-00000.tar#000005" in message
