"""The `beit3-pipeline` flow end to end on a tiny raw dataset: real Prefect, real Ray (preprocessing and Ray Train
pretraining), real MLflow; `evaluation.finetune` is a fast stand-in that counts calls per benchmark, so that reruns can
be counted (test_pipeline_real_finetune.py runs the DAG with the real fine-tuning).

One sequence of flow runs over one run directory, each a module fixture built on the previous one:
first run -> unchanged rerun -> one benchmark's config changed -> one raw file changed.
"""

import json
from pathlib import Path

import mlflow
import pytest
from support.raw_data import build_raw_dataset, image_bytes, tiny_preprocess_config

pytestmark = pytest.mark.slow

BENCHMARKS = ["vqav2", {"task": "nlvr2", "overrides": {"epochs": 1}}, "coco_captioning"]
ALL_STEPS = {
    "ingest[pairs]",
    "ingest[images]",
    "ingest[texts]",
    "preprocess",
    "pretrain",
    "finetune[vqav2]",
    "finetune[nlvr2]",
    "finetune[coco_captioning]",
    "report",
}


def _run(config: Path, **selection) -> dict:
    from flows.pipeline import beit3_pipeline

    return beit3_pipeline(str(config), **selection)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pipeline_config_writer):
    root = tmp_path_factory.mktemp("pipeline")
    raw = build_raw_dataset(root / "raw")
    # Three of the raw sources keep the DAG small; the preprocessing tests cover every format.
    sources = [s for s in raw["sources"] if s["name"] in ("pairs", "images", "texts")]
    preprocess = tiny_preprocess_config(root, root / "unused-output", sources)
    # Runs are stored where the config says (a pyarrow filesystem URI here), not under the run directory.
    storage = (root / "shared-storage").as_uri()
    return root, pipeline_config_writer(root, preprocess, BENCHMARKS, storage=storage), preprocess


@pytest.fixture(scope="module")
def first_run(prefect_server, ray_local, fake_finetune, workspace):
    _, config, _ = workspace
    return _run(config)


@pytest.fixture(scope="module")
def rerun(first_run, workspace):
    return _run(workspace[1])


@pytest.fixture(scope="module")
def bench_changed(rerun, workspace, pipeline_config_writer, fake_finetune):
    root, _, preprocess = workspace
    before = dict(fake_finetune.CALLS)
    benchmarks = ["vqav2", {"task": "nlvr2", "overrides": {"epochs": 3}}, "coco_captioning"]
    config = pipeline_config_writer(root, preprocess, benchmarks, storage=(root / "shared-storage").as_uri())
    return _run(config), before


@pytest.fixture(scope="module")
def file_changed(bench_changed, workspace):
    root, config, _ = workspace
    (root / "raw" / "images" / "img004.jpg").write_bytes(image_bytes(999, fmt="JPEG"))
    return _run(config)


def test_first_run_executes_every_step_and_writes_results(first_run, prefect_states):
    states = prefect_states(first_run["flow_run_id"])
    assert states == {label: "Completed" for label in ALL_STEPS}
    results = json.loads((Path(first_run["run_dir"]) / "results.json").read_text())
    assert set(results["benchmarks"]) == {"vqav2", "nlvr2", "coco_captioning"}
    for entry in results["benchmarks"].values():
        assert entry["status"] == "completed" and 50 <= entry["metrics"]["accuracy"] < 90
    assert results["benchmarks"]["nlvr2"]["metrics"]["epochs"] == 1
    assert Path(results["pretrain"]["checkpoint"]).is_file()
    storage = Path(first_run["run_dir"]).parent / "shared-storage" / "pretrain"
    assert [str(p) for p in storage.glob("*/final/model.safetensors")] == [results["pretrain"]["checkpoint"]]
    assert not (Path(first_run["run_dir"]) / "pretrain").exists()
    assert results["pretrain"]["metrics"]["loss"] > 0
    manifest = json.loads((Path(first_run["run_dir"]) / "shards" / "manifest.json").read_text())
    assert results["dataset_version"] == manifest["dataset_version"]


def test_mlflow_has_one_parent_run_with_a_nested_run_per_step(first_run):
    uri = f"sqlite:///{Path(first_run['run_dir']) / '.state' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(first_run["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["beit3.dataset_version"] and tags["beit3.config_hash"] and tags["mlflow.source.git.commit"]
    assert tags["beit3.prefect_flow_run_id"] == first_run["flow_run_id"]
    assert parent.data.metrics["vqav2/accuracy"] > 0 and parent.data.metrics["pretrain/loss"] > 0
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.data.tags["beit3.step"] for c in children} == {
        "preprocess",
        "pretrain",
        "finetune[vqav2]",
        "finetune[nlvr2]",
        "finetune[coco_captioning]",
    }
    pretrain_run = next(c for c in children if c.data.tags["beit3.step"] == "pretrain")
    assert pretrain_run.info.run_id == first_run["results"]["pretrain"]["mlflow_run_id"]
    assert "loss" in pretrain_run.data.metrics  # logged by rank 0 of the Ray Train run
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["results.json"]


def test_unchanged_rerun_is_all_cache_hits(rerun, first_run, prefect_states):
    assert prefect_states(rerun["flow_run_id"]) == {label: "Cached" for label in ALL_STEPS}
    assert rerun["results"] == first_run["results"]


def test_changing_one_benchmark_config_reruns_only_that_benchmark(bench_changed, prefect_states, fake_finetune):
    out, calls_before = bench_changed
    states = prefect_states(out["flow_run_id"])
    rerun = {label for label, state in states.items() if state == "Completed"}
    assert rerun == {"finetune[nlvr2]", "report"}
    assert all(states[label] == "Cached" for label in ALL_STEPS - rerun)
    assert out["results"]["benchmarks"]["nlvr2"]["metrics"]["epochs"] == 3
    calls_after = fake_finetune.CALLS
    assert {
        task: calls_after[task] - calls_before.get(task, 0)
        for task in calls_after
        if calls_after[task] != calls_before.get(task, 0)
    } == {"nlvr2": 1}


def test_changing_one_raw_file_reruns_only_what_depends_on_it(file_changed, bench_changed, prefect_states):
    states = prefect_states(file_changed["flow_run_id"])
    assert {label for label, state in states.items() if state == "Cached"} == {"ingest[pairs]", "ingest[texts]"}
    assert all(
        state == "Completed" for label, state in states.items() if label not in ("ingest[pairs]", "ingest[texts]")
    )
    ledger = json.loads((Path(file_changed["run_dir"]) / ".state" / "steps.json").read_text())["steps"]
    preprocess = ledger["preprocess"]["output"]
    # The preprocessing library itself redid only the shard holding the changed image.
    assert len(preprocess["shards_built"]) == 1 and preprocess["shards_built"][0].startswith("images-")
    assert preprocess["dataset_version"] != bench_changed[0]["results"]["dataset_version"]
    assert file_changed["results"]["pretrain"]["checkpoint"] != bench_changed[0]["results"]["pretrain"]["checkpoint"]


def test_status_says_what_is_stale(file_changed, workspace):
    from flows.steps.status import pipeline_status

    root, config, _ = workspace
    assert [r.label for r in pipeline_status(config) if r.stale] == []
    texts = root / "raw" / "texts" / "corpus.txt"
    original = texts.read_bytes()
    try:
        texts.write_bytes(original + b"one more line of plain text\n")
        stale = {r.label: r.reason for r in pipeline_status(config) if r.stale}
        assert stale == {
            "ingest[texts]": "inputs, config or code changed",
            "preprocess": "inputs, config or code changed",
            "pretrain": "upstream preprocess is stale",
            "finetune[vqav2]": "upstream pretrain is stale",
            "finetune[nlvr2]": "upstream pretrain is stale",
            "finetune[coco_captioning]": "upstream pretrain is stale",
            "report": "upstream pretrain is stale",
        }
    finally:
        texts.write_bytes(original)
    assert not [r for r in pipeline_status(config) if r.stale]


def test_only_runs_just_the_named_steps(file_changed, workspace, prefect_states):
    out = _run(workspace[1], only=["finetune:vqav2"], force=["finetune"])
    assert prefect_states(out["flow_run_id"]) == {"finetune[vqav2]": "Completed"}
    # The forced benchmark has a new MLflow run, so the report (which lists it) is redone once, then cached.
    assert prefect_states(_run(workspace[1], only=["report"])["flow_run_id"]) == {"report": "Completed"}
    assert prefect_states(_run(workspace[1], only=["report"])["flow_run_id"]) == {"report": "Cached"}


def test_from_runs_the_step_and_everything_after_it(file_changed, workspace, prefect_states):
    out = _run(workspace[1], from_step="finetune")
    assert prefect_states(out["flow_run_id"]) == {
        "finetune[vqav2]": "Cached",
        "finetune[nlvr2]": "Cached",
        "finetune[coco_captioning]": "Cached",
        "report": "Cached",
    }


def test_force_reruns_a_step_and_caching_stops_where_its_output_is_unchanged(file_changed, workspace, prefect_states):
    before = json.loads((Path(file_changed["run_dir"]) / "results.json").read_text())
    out = _run(workspace[1], force=["preprocess"])
    states = prefect_states(out["flow_run_id"])
    assert states["preprocess"] == "Completed"
    # Same shards (the library reuses every one), same dataset version: everything downstream is a cache hit.
    assert {label for label, state in states.items() if state != "Cached"} == {"preprocess"}
    assert out["results"] == before


def test_a_skipped_step_that_never_ran_is_an_error(prefect_server, tmp_path, workspace, pipeline_config_writer):
    from flows.steps.runner import MissingStepOutput

    config = pipeline_config_writer(tmp_path, workspace[2], BENCHMARKS)
    with pytest.raises(MissingStepOutput, match=r"step ingest\[pairs\] was not selected and has never completed"):
        _run(config, only=["pretrain"])
    with pytest.raises(ValueError, match="unknown step 'finetune\\[coco\\]'"):
        _run(config, force=["finetune:coco"])


def test_compare_shows_two_real_runs_side_by_side_and_logs_a_radar_chart(first_run, file_changed, workspace, tmp_path):
    from flows.cli import main

    png = tmp_path / "radar.png"
    ids = [first_run["mlflow_run_id"], file_changed["mlflow_run_id"]]
    assert main(["compare", *ids, "--config", str(workspace[1]), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(first_run['run_dir']) / '.state' / 'mlflow.db'}")
    experiment = client.get_run(ids[0]).info.experiment_id
    (compare,) = client.search_runs([experiment], filter_string="tags.`beit3.step` = 'compare'")
    assert compare.data.tags["beit3.compared_runs"] == ",".join(ids)
    assert sorted(a.path for a in client.list_artifacts(compare.info.run_id)) == ["comparison.json", "radar.png"]
