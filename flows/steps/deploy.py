"""`beit3 deploy`: a scheduled deployment of `beit3-pipeline` on a Prefect server, run by a process work pool.

The deployment runs the flow from this checkout (`flow.from_source(<repo>, "flows/pipeline.py:beit3_pipeline")`)
with the config path as its parameter and the current directory as the worker's working directory, so the
config's relative paths mean what they mean here. Start a worker with `prefect worker start --pool <pool>`.
"""

from pathlib import Path
from uuid import UUID

from flows.steps.keys import REPO_ROOT

ENTRYPOINT = "flows/pipeline.py:beit3_pipeline"


def ensure_work_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_pipeline(
    config: Path, cron: str, name: str, work_pool: str, timezone: str | None, working_dir: Path
) -> UUID:
    from prefect import flow
    from prefect.schedules import Cron

    ensure_work_pool(work_pool)
    pipeline = flow.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    return pipeline.deploy(
        name=name,
        work_pool_name=work_pool,
        schedule=Cron(cron, timezone=timezone) if timezone else Cron(cron),
        parameters={"config_path": str(config.resolve())},
        job_variables={"working_dir": str(working_dir.resolve())},
        tags=["beit3"],
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,
    )
