"""The MLflow experiment a run is logged under, created on first use."""

from pathlib import Path


def experiment_id(client, name: str, tracking_uri: str, storage: Path) -> str:
    """Id of experiment `name`; a new one keeps its artifacts in `<storage>/mlartifacts` on a SQLite store.

    MLflow's default artifact root for a SQLite store is `./mlruns` of the current directory, which would scatter
    artifacts wherever a command happens to be started.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (storage / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite") else None
    return client.create_experiment(name, artifact_location=location)


def log_params(client, run_id: str, params: dict) -> None:
    """All `params` in batches of 100 (MLflow's limit per call), each value cut to MLflow's 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
