"""`beit3 deploy CONFIG --cron "0 2 * * *"`: a scheduled deployment of the pipeline on a Prefect server.

Needs a real server (`PREFECT_API_URL`; `infra/local_stack.sh start` starts one on 127.0.0.1, `infra/README.md`
the cluster one) and creates the process work pool if it is missing. Runs start when a worker polls the pool:
`prefect worker start --pool beit3`.
"""

import argparse
import logging
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("deploy", help="scheduled deployment of the pipeline on a Prefect server")
    parser.add_argument("config", type=Path, help="pipeline YAML")
    parser.add_argument("--cron", required=True, help='schedule, e.g. "0 2 * * *"')
    parser.add_argument("--timezone", default=None, help="IANA name, e.g. Europe/Berlin (default: UTC)")
    parser.add_argument("--name", default=None, help="deployment name (default: the config's file stem)")
    parser.add_argument("--pool", default=None, help="process work pool (default: BEIT3_WORK_POOL or beit3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.settings import Settings
    from flows.steps.config import load_pipeline_config

    settings = Settings()
    if not settings.prefect_api_url:
        print(
            "beit3 deploy: error: a scheduled deployment needs a Prefect server; set PREFECT_API_URL "
            "(infra/local_stack.sh start prints one for this machine, infra/README.md shows the cluster one)",
            file=sys.stderr,
        )
        return 2
    try:
        load_pipeline_config(args.config)  # fail here, not at 2 a.m.
    except (OSError, ValueError) as error:
        print(f"beit3 deploy: error: {args.config}: {error}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from flows.steps.deploy import deploy_pipeline

    pool = args.pool or settings.work_pool
    name = args.name or args.config.stem
    deployment_id = deploy_pipeline(args.config, args.cron, name, pool, args.timezone, Path(os.getcwd()))
    print(f"deployment beit3-pipeline/{name} ({deployment_id}): cron {args.cron!r} on work pool {pool!r}")
    print(f"start a worker: PREFECT_API_URL={settings.prefect_api_url} prefect worker start --pool {pool}")
    print(f"run it now:     prefect deployment run 'beit3-pipeline/{name}'")
    return 0
