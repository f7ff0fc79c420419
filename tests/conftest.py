"""Suite-wide collection order: the longest files first.

`make test` runs two pytest-xdist processes that take whole files (`--dist loadfile`) in collection order
(`--no-loadscope-reorder`), two files each at the start and one more whenever one finishes. The few files that
start Ray Train runs and Prefect flows hold most of the suite's time; started first, they overlap the many short
files instead of one of them running alone at the end. Serial seconds on 2 cores (2026-12-03): pretrain_ray 273,
finetune_ray 128, deploy 102, pipeline 81, pipeline_real_finetune 80, pipeline_itc 69; the other 83 files ~330.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
LONGEST_FIRST = (
    "integration/test_pretrain_ray.py",
    "integration/test_finetune_ray.py",
    "flows/test_deploy.py",
    "flows/test_pipeline.py",
    "flows/test_pipeline_real_finetune.py",
    "flows/test_pipeline_itc.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.path.resolve().relative_to(TESTS).as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's own order is kept
