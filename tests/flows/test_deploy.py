"""`beit3 deploy` against a real Prefect server started by `infra/local_stack.sh` (with a two-node Ray and an
MLflow server on 127.0.0.1), and the infra manifests' shape."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.raw_data import build_raw_dataset, tiny_preprocess_config
from support.ray_cluster import group_alive

INFRA = Path(__file__).resolve().parents[2] / "infra"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    stack = [str(INFRA / "local_stack.sh")]
    env = os.environ | {"PYTHON": sys.executable}
    started = subprocess.run([*stack, "start", str(state)], capture_output=True, text=True, env=env, timeout=240)
    groups = [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        values = dict(line.removeprefix("export ").split("=", 1) for line in (state / "env").read_text().splitlines())
        yield values, groups
    finally:
        stopped = subprocess.run([*stack, "stop", str(state)], capture_output=True, text=True, env=env, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert not [g for g in groups if group_alive(g)]


@pytest.mark.slow
def test_local_stack_runs_a_two_node_ray_prefect_and_mlflow_on_localhost(local_stack):
    env, groups = local_stack
    assert len(groups) == 4
    for url in (env["PREFECT_API_URL"] + "/health", env["MLFLOW_TRACKING_URI"] + "/health"):
        assert url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(url, timeout=10).status == 200
    count = "import ray; ray.init(log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    nodes = subprocess.run(
        [sys.executable, "-c", count], capture_output=True, text=True, timeout=60, env=os.environ | env
    )
    assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]


@pytest.mark.slow
def test_deploy_creates_a_scheduled_deployment_on_a_process_work_pool(local_stack, tmp_path, pipeline_config_writer):
    env, _ = local_stack
    raw = build_raw_dataset(tmp_path / "raw")
    config = pipeline_config_writer(tmp_path, tiny_preprocess_config(tmp_path, tmp_path / "x", raw["sources"]), [])
    command = [sys.executable, "-m", "flows.cli", "deploy", str(config), "--cron", "30 2 * * *", "--name", "nightly"]
    env = env | {"PYTHONPATH": os.pathsep.join([str(INFRA.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ | env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deployment beit3-pipeline/nightly" in out.stdout
    url = env["PREFECT_API_URL"] + "/deployments/name/beit3-pipeline/nightly"
    deployment = json.load(urllib.request.urlopen(url, timeout=10))
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["30 2 * * *"]
    assert deployment["schedules"][0]["active"] is True
    assert deployment["parameters"] == {"config_path": str(config)}
    assert deployment["work_pool_name"] == "beit3"
    assert deployment["entrypoint"] == "flows/pipeline.py:beit3_pipeline"
    assert deployment["job_variables"]["working_dir"] == str(tmp_path)
    pool = json.load(urllib.request.urlopen(env["PREFECT_API_URL"] + "/work_pools/beit3", timeout=10))
    assert pool["type"] == "process"


def test_deploy_without_a_prefect_server_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    config = tmp_path / "p.yaml"
    config.write_text("run_dir: run\npreprocess: p.yaml\n")
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", str(config), "--cron", "0 2 * * *"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2 and "set PREFECT_API_URL" in out.stderr


def test_infra_manifests_describe_gpu_workers_and_the_servers():
    launcher = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    assert launcher["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 4
    assert launcher["head_node_type"] in launcher["available_node_types"]
    kuberay = yaml.safe_load((INFRA / "k8s" / "raycluster-gpu.yaml").read_text())
    assert kuberay["apiVersion"] == "ray.io/v1" and kuberay["kind"] == "RayCluster"
    (group,) = kuberay["spec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert "prefect server start" in compose["prefect-server"]["command"]
    assert "prefect worker start --pool beit3" in compose["prefect-worker"]["command"]
    mlflow = compose["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in mlflow and "--artifacts-destination s3://" in mlflow
    readme = (INFRA / "README.md").read_text()
    for needle in ("ray up infra/ray/cluster.yaml", "kubectl apply -f infra/k8s/raycluster-gpu.yaml", "local_stack.sh"):
        assert needle in readme
    assert subprocess.run(["bash", "-n", str(INFRA / "local_stack.sh")]).returncode == 0


def _api(env: dict, path: str, body: dict | None = None, attempts: int = 6):
    """One call of the Prefect REST API; a busy server answers 503 at times, and is asked again (as Prefect's own
    client does)."""
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    for attempt in range(attempts):
        try:
            return json.load(urllib.request.urlopen(request, timeout=30))
        except urllib.error.HTTPError as error:
            if error.code not in (429, 502, 503) or attempt == attempts - 1:
                raise AssertionError(f"{request.method} {path}: HTTP {error.code} {error.read()[:2000]!r}") from error
            time.sleep(2 * (attempt + 1))


def _run_deployment(env: dict, deployment_id: str, parameters: dict, timeout: float = 400) -> tuple[dict, dict]:
    """Start a run of the deployment, wait for a terminal state; the flow run and its task runs' state names."""
    run = _api(env, f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
    deadline = time.monotonic() + timeout
    while run["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"flow run {run['id']} still {run['state']['type']} after {timeout} s"
        time.sleep(1)
        run = _api(env, f"/flow_runs/{run['id']}")
    # Task run states reach the server as events, recorded a moment after the flow run ends (longer on a busy
    # machine): wait until every one is final.
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    deadline = time.monotonic() + 60
    while True:
        tasks = _api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        if all(t["state"] and t["state"]["type"] in final for t in tasks) or time.monotonic() > deadline:
            return run, {t["name"]: t["state"]["name"] if t["state"] else "-" for t in tasks}
        time.sleep(0.5)


@pytest.mark.slow
def test_a_worker_keeps_cached_results_in_the_run_dir_and_reruns_steps_whose_files_are_gone(
    local_stack, tmp_path, pipeline_config_writer
):
    """The scheduled-cluster use: a Prefect worker runs the deployment. The first run does the early steps only;
    then the run directory is removed, so the next run must do them again (taking them from a cache, pretraining
    would find no shards), and must leave every file it reports. Then results.json and the ledger are removed:
    the report step alone runs again. No step result may be kept in the worker's own home."""
    env, _ = local_stack
    raw = build_raw_dataset(tmp_path / "raw")
    sources = [s for s in raw["sources"] if s["name"] in ("pairs", "images", "texts")]
    config = pipeline_config_writer(tmp_path, tiny_preprocess_config(tmp_path, tmp_path / "x", sources), [])
    env = env | {"PYTHONPATH": os.pathsep.join([str(INFRA.parent), os.environ.get("PYTHONPATH", "")])}
    env = os.environ | env | {"PREFECT_HOME": str(tmp_path / "worker-home"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("BEIT3_RESULT_STORAGE", None)
    command = [sys.executable, "-m", "flows.cli", "deploy", str(config), "--cron", "0 3 * * *", "--name", "worker"]
    deployed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    deployment_id = deployed.stdout.split("(", 1)[1].split(")", 1)[0]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "beit3", "--limit", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    run_dir, params = tmp_path / "run", {"config_path": str(config)}
    runs = []
    try:
        for parameters, before in [
            (params | {"only": ["ingest", "preprocess"]}, lambda: None),
            (params, lambda: shutil.rmtree(run_dir)),
            (params, lambda: [(run_dir / "results.json").unlink(), (run_dir / ".state" / "steps.json").unlink()]),
        ]:
            if runs:
                records = {p.name for p in (run_dir / ".state" / "prefect" / "results").iterdir()}
                assert records >= {entry["key"] for entry in _ledger(run_dir).values()}
            before()
            runs.append(_run_deployment(env, deployment_id, parameters))
            assert runs[-1][0]["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a busy machine can keep the worker's shutdown waiting on the server
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        log.close()
    early = {"ingest[pairs]", "ingest[images]", "ingest[texts]", "preprocess"}
    assert runs[0][1] == {label: "Completed" for label in early}
    assert runs[1][1] == {label: "Completed" for label in early | {"pretrain", "report"}}
    assert runs[2][1] == {label: "Cached" for label in early | {"pretrain"}} | {"report": "Completed"}
    ledger = _ledger(run_dir)
    reported = [f for entry in ledger.values() for f in entry["output"].get("files", [])]
    results = json.loads((run_dir / "results.json").read_text())
    reported += [results["pretrain"]["checkpoint"], str(run_dir / "results.json")]
    assert len(reported) > 5 and all(Path(f).is_file() for f in reported)
    assert not list((tmp_path / "worker-home").glob("storage/*"))


def _ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / ".state" / "steps.json").read_text())["steps"]
