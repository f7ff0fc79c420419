"""Where the pipeline runs: environment variables read once into one settings object.

Local by default (nothing to start by hand): an ephemeral Prefect server whose state lives in
`<run_dir>/.state/prefect`, a local Ray started in the driver, MLflow in `<run_dir>/.state/mlflow.db`. A cluster
is the same code with other values (see docs `/work/shared/spec/orchestration.md` section 6 and `infra/README.md`):

| variable | local (unset) | cluster |
|---|---|---|
| `PREFECT_API_URL` | ephemeral server, `PREFECT_HOME=<run_dir>/.state/prefect` | `http://prefect:4200/api` |
| `RAY_ADDRESS` | `ray.init(address="local")` with `BEIT3_RAY_NUM_CPUS` | `ray-head:6379` |
| `MLFLOW_TRACKING_URI` | `sqlite:///<run_dir>/.state/mlflow.db` | `http://mlflow:5000` |
| `BEIT3_RESULT_STORAGE` | `<run_dir>/.state/prefect/results` | a folder (absolute path) or a saved Prefect block slug |

Cached step results always go where `BEIT3_RESULT_STORAGE` says (default: inside the run directory), whichever
process runs the flow: `beit3 run`, or a Prefect worker running a deployment, whose `PREFECT_HOME` would otherwise
hold them (`flows.steps.runner` sets each step's `result_storage`).

`configure_environment` must run before `prefect` is imported: Prefect reads its settings at import time.
"""

import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from beit3_core.runtime.cluster import start_ray

STATE_DIR = ".state"


class Settings(BaseSettings):
    """Execution settings from the environment; see the module docstring."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    ray_address: str | None = Field(None, validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"))
    prefect_api_url: str | None = Field(None, validation_alias=AliasChoices("PREFECT_API_URL", "prefect_api_url"))
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri")
    )
    # BEIT3_RAY_NUM_CPUS: logical CPUs of a local Ray, read by `beit3_core.runtime.cluster` (default cores + 1).
    ray_object_store_bytes: int = Field(
        1_500_000_000, validation_alias=AliasChoices("BEIT3_RAY_OBJECT_STORE_BYTES", "ray_object_store_bytes")
    )
    result_storage: str | None = Field(None, validation_alias=AliasChoices("BEIT3_RESULT_STORAGE", "result_storage"))
    """A folder (`/`, `~` or `.` first) or a saved Prefect filesystem block slug (`s3-bucket/beit3-results`);
    unset or empty: `<run_dir>/.state/prefect/results`."""
    work_pool: str = Field("beit3", validation_alias=AliasChoices("BEIT3_WORK_POOL", "work_pool"))

    def tracking_uri(self, run_dir: Path) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{state_dir(run_dir) / 'mlflow.db'}"

    def artifact_location(self, run_dir: Path) -> str | None:
        """Local artifact folder for a sqlite store; a tracking server decides its own."""
        return (
            (state_dir(run_dir) / "mlartifacts").as_uri() if self.tracking_uri(run_dir).startswith("sqlite") else None
        )

    def results_storage(self, run_dir: Path) -> str | Path:
        """Where Prefect keeps cached step results and cache records: a local folder (a `Path`, which Prefect
        wraps in an unsaved `LocalFileSystem`) or a block slug `<block-type>/<block-name>` (a `str`)."""
        value = (self.result_storage or "").strip()
        if not value:
            return state_dir(run_dir) / "prefect" / "results"
        if value.startswith(("/", "~", ".")):
            return Path(value).expanduser().resolve()
        block_type, sep, name = value.partition("/")
        if not (sep and block_type and name) or "/" in name:
            raise ValueError(
                f"BEIT3_RESULT_STORAGE={value!r}: expected a folder (starting with /, ~ or .) or a saved Prefect "
                "block slug <block-type>/<block-name>, e.g. local-file-system/beit3-results"
            )
        return value


def state_dir(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / STATE_DIR


def configure_environment(run_dir: Path) -> Settings:
    """Set the local-mode variables (before `import prefect`) and return the settings."""
    settings = Settings()
    if not settings.prefect_api_url:
        home = state_dir(run_dir) / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home)
        # A fresh database takes ~18 s to migrate on 2 cores; the default timeout is 20 s (spec 1.1).
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not settings.ray_address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local only; a cluster sets `token`
    return settings


def ensure_ray(settings: Settings, min_cpus: float = 1) -> None:
    """Connect to `RAY_ADDRESS`, or start the local Ray once per process (reused by every later step)."""
    start_ray(settings.ray_address, min_cpus, settings.ray_object_store_bytes)
