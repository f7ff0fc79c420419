"""MLflow bookkeeping: one parent run per pipeline run, one nested run per executed step.

Runs are created with `MlflowClient` and explicit run ids (never the fluent `mlflow.start_run` stack, which is
per thread and the fan-out steps run in Prefect's thread pool). A library that opens its own run (pretraining,
fine-tuning) is nested afterwards by tagging it with `mlflow.parentRunId`, which is how MLflow nests runs.
A cached step starts no run; the parent records its state and the run that produced its result instead.
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from flows.steps.keys import REPO_ROOT
from flows.steps.results_table import flat_unit_metrics

PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class Tracking:
    """Where to log, and the tags every run of this pipeline run carries."""

    uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    config_hash: str
    git_commit: str

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def tags(self, step: str) -> dict[str, str]:
        return {
            PARENT_TAG: self.parent_run_id,
            "beit3.step": step,
            "beit3.config_hash": self.config_hash,
            "mlflow.source.git.commit": self.git_commit,
        }

    def nested_run(self, step: str, params: dict, metrics: dict[str, float], tags: dict[str, str]) -> str:
        """Create a finished child run holding the step's params, metrics and tags; returns its id."""
        from mlflow.entities import Metric, Param

        client = self.client()
        run = client.create_run(self.experiment_id, run_name=step, tags=self.tags(step) | tags)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def adopt(self, run_id: str, step: str, tags: dict[str, str] | None = None) -> None:
        """Nest a run that a library created on its own under the pipeline's parent run."""
        client = self.client()
        for key, value in (self.tags(step) | (tags or {})).items():
            client.set_tag(run_id, key, value)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def start_parent_run(
    uri: str, experiment: str, artifact_location: str | None, run_name: str, config_hash: str, tags: dict[str, str]
) -> Tracking:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    commit = git_commit()
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={"beit3.step": "pipeline", "beit3.config_hash": config_hash, "mlflow.source.git.commit": commit} | tags,
    )
    return Tracking(uri, experiment_id, experiment, run.info.run_id, config_hash, commit)


def finish_parent_run(
    tracking: Tracking,
    status: str,
    steps: dict[str, dict],
    results: dict | None,
    results_file: Path | None,
    tags: dict[str, str],
) -> None:
    """Log the step states, the benchmark metrics (`<task>/<metric>`, with `<task>/baseline_<metric>`,
    `<task>/baseline_<metric>_stderr` and `<task>/scratch_<metric>`) and results.json; close the parent run."""
    from mlflow.entities import Metric, RunTag

    client = tracking.client()
    run_id = tracking.parent_run_id
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    for label, step in steps.items():
        run_tags.append(RunTag(f"beit3.state.{_tag_safe(label)}", step["state"]))
        if step.get("mlflow_run_id"):
            run_tags.append(RunTag(f"beit3.run.{_tag_safe(label)}", step["mlflow_run_id"]))
    metrics = []
    for task, entry in ((results or {}).get("benchmarks") or {}).items():
        metrics += [Metric(f"{task}/{k}", float(v), 0, 0) for k, v in _numbers(flat_unit_metrics(entry)).items()]
    pretrain = (results or {}).get("pretrain") or {}
    metrics += [Metric(f"pretrain/{k}", float(v), 0, 0) for k, v in _numbers(pretrain.get("metrics") or {}).items()]
    client.log_batch(run_id, metrics=metrics, tags=run_tags)
    if results_file is not None and results_file.is_file():
        client.log_artifact(run_id, str(results_file))
    client.set_terminated(run_id, status)


def _tag_safe(label: str) -> str:
    return label.replace("[", ".").replace("]", "")


def _numbers(metrics: dict) -> dict[str, float]:
    return {
        k.replace(" ", "_"): v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
