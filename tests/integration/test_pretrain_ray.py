"""MDM pretraining end to end with the real Ray Train (2 CPU workers, gloo DDP) and a real MLflow store.

Each run is a `beit3 pretrain` subprocess, so every test gets its own local Ray and a real process to kill.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from safetensors.torch import load_file
from support.model_inputs import micro_pretrain_overrides
from support.shards import build_test_shards

from beit3_core.train.config import build_config

pytestmark = pytest.mark.slow

STEPS = 12
CONFIG = (
    {"recipe": "tiny_cpu"}
    | micro_pretrain_overrides(loader_workers=1, warmup_steps=3)
    | {
        "run": {"steps": STEPS, "checkpoint_every": 4, "log_every": 2, "seed": 3},
    }
)


def _write_config(folder: Path, shards: Path, storage: Path, **run) -> Path:
    config = {**CONFIG, "data": CONFIG["data"] | {"shards": str(shards)}}
    config["run"] = CONFIG["run"] | {"storage_path": str(storage)} | run
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _pretrain(config: Path, *extra: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "pretrain", str(config), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"beit3 pretrain failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def _final_weights(storage: Path) -> dict:
    (path,) = storage.glob("pretrain-*/final/model.safetensors")
    return load_file(path)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_test_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory):
    """An uninterrupted run: its MLflow store and final weights are what the other runs must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    out = _pretrain(_write_config(folder, shards, folder / "runs"))
    return folder / "runs", out.stdout, out.stderr


def test_run_reports_where_mlflow_is_and_the_loss_falls(reference_run):
    storage, stdout, stderr = reference_run
    assert "MLflow run" in stdout and f"sqlite:///{storage}/mlflow.db" in stdout
    # Live progress on stderr (plain lines: no terminal): the last step, with loss and rate.
    lines = [line for line in stderr.splitlines() if line.startswith("pretrain pretrain-") and ": step " in line]
    assert lines and f"step {STEPS}/{STEPS} loss " in lines[-1] and "samples/s" in lines[-1], stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("beit3-pretrain").experiment_id)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(2, STEPS + 1, 2))
    assert history[-1].value < history[0].value - 0.5, [m.value for m in history]


def test_mlflow_run_holds_params_metrics_and_artifacts(reference_run):
    storage = reference_run[0]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("beit3-pretrain").experiment_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["run.steps"] == str(STEPS) and params["optim.lr"] == str(build_config("tiny_cpu").optim.lr)
    assert params["data.pack_texts"] == "True" and json.loads(params["model.overrides"])["text_embed_init_std"] == 1.0
    assert params["model_config.embed_dim"] == "64" and params["model_config.visual_vocab_size"] == "8"
    for name in (
        "loss",
        "lr",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
        "loss_image",
        "loss_pair_text",
        "accuracy_image",
        "accuracy_text",
        "accuracy_pair_image",
        "accuracy_pair_text",
        "final_accuracy_image",
        "final_baseline_text",
    ):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pretrain_config.yaml", "masked_predictions.png", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.safetensors"]


def test_killed_worker_is_restarted_and_the_result_is_identical(reference_run, shards, tmp_path):
    storage = reference_run[0]
    marker = tmp_path / "killed"
    fault = {"kill_rank": 1, "at_step": 7, "marker": str(marker)}
    out = _pretrain(_write_config(tmp_path, shards, tmp_path / "runs", fault_injection=fault))
    assert marker.read_text() == "killed rank 1 at step 7\n"  # the SIGKILL really happened
    # The user is told which rank died and where the restarted group continues (the last checkpoint the
    # controller registered before the failure: step 4, or the start when the kill came first), then the rest.
    (failure,) = [line for line in out.stderr.splitlines() if "worker failure:" in line]
    assert "rank 1 (WorkerHealthCheckFailedError" in failure and "restarts left after this one: 1" in failure
    restart = failure.split("restarting from ")[1]
    assert restart.startswith(("step 4,", "the start")), failure
    if restart.startswith("step 4,"):
        assert "rank 0 resumed from the checkpoint of step 4" in out.stderr, out.stderr
    assert f"step {STEPS}/{STEPS} loss" in out.stderr.split(failure)[1]
    assert _max_diff(_final_weights(tmp_path / "runs"), _final_weights(storage)) <= 1e-6


def test_resume_after_a_full_stop_is_identical(reference_run, shards, tmp_path):
    storage = reference_run[0]
    runs = tmp_path / "runs"
    config = _write_config(tmp_path, shards, runs)
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "pretrain", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list(runs.glob("pretrain-*/checkpoint_*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be stopped"
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its local Ray and every worker
    process.wait()
    (run_dir,) = runs.glob("pretrain-*")
    assert not (run_dir / "final").exists()

    # Naming the old run without --resume is refused rather than silently continuing it.
    clash = _pretrain(config, "--set", f"run.name={run_dir.name}", check=False)
    assert clash.returncode != 0 and "already exists" in clash.stderr
    resumed = _pretrain(config, "--resume", run_dir.name)
    assert f"run {run_dir.name}" in resumed.stdout
    assert _max_diff(load_file(run_dir / "final/model.safetensors"), _final_weights(storage)) <= 1e-6


def test_corrupt_shard_error_names_the_shard(shards, tmp_path):
    broken = tmp_path / "shards"
    broken.mkdir()
    for f in shards.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tar = broken / "fixture-001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    out = _pretrain(_write_config(tmp_path, broken, tmp_path / "runs", max_failures=0), check=False)
    assert out.returncode != 0
    assert "bad shard fixture-001" in out.stderr + out.stdout


def test_bad_shard_can_be_skipped(shards, tmp_path):
    broken = tmp_path / "shards"
    broken.mkdir()
    for f in shards.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "fixture-002.tar").unlink()
    config = _write_config(tmp_path, broken, tmp_path / "runs", steps=4, checkpoint_every=4)
    data = yaml.safe_load(config.read_text())
    data["data"]["on_bad_shard"] = "skip"
    config.write_text(yaml.safe_dump(data))
    out = _pretrain(config)
    assert "final loss" in out.stdout


def test_fsdp_run_resumed_on_one_worker_equals_the_uninterrupted_run(reference_run, shards, tmp_path):
    """FSDP2 on a CPU mesh (gloo): 2 workers save sharded checkpoints, one is killed, the run resumes on 1 worker
    (the same 2 data ranks, now both on one worker) and ends with the weights of the uninterrupted DDP run."""
    storage = reference_run[0]
    runs = tmp_path / "runs"
    marker = tmp_path / "killed"
    fault = {"kill_rank": 1, "at_step": 6, "marker": str(marker)}
    config = _write_config(tmp_path, shards, runs, strategy="fsdp", max_failures=0, fault_injection=fault)
    failed = _pretrain(config, check=False)
    assert failed.returncode != 0 and marker.read_text() == "killed rank 1 at step 6\n"
    (run_dir,) = runs.glob("pretrain-*")
    (checkpoint,) = [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (run_dir / "final").exists()

    resumed = _pretrain(config, "--resume", run_dir.name, "--set", "run.num_workers=1", "--set", "run.data_ranks=2")
    assert f"run {run_dir.name}" in resumed.stdout
    assert _max_diff(load_file(run_dir / "final/model.safetensors"), _final_weights(storage)) <= 1e-6
