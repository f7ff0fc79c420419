"""Every YAML under configs/ loads through its own loader: unknown fields, bad values and broken references to
other configs fail here rather than minutes into `make demo`."""

from pathlib import Path

import pytest

from beit3_core.train.config import load_config
from evaluation.finetune.config import load_finetune_config
from flows.steps.config import load_pipeline_config
from preprocessing.config import load_preprocess_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LOADERS = {
    # The text tasks ask for a tokenizer path (the demo's is built by preprocessing); any path passes the check.
    "finetune_": lambda path: load_finetune_config(path, overrides={"data": {"tokenizer": str(path)}}),
    "pipeline_": load_pipeline_config,
    # The demo's sources file is written by `beit3 demo-data`; without it the rest of the config is still checked.
    "preprocess_": lambda path: load_preprocess_config(
        path, overrides=None if (CONFIGS.parent / "data" / "demo" / "demo_sources.yaml").is_file() else {"sources": []}
    ),
    "pretrain_": load_config,
    "itc_": load_config,
}


def _loader(path: Path):
    return next(loader for prefix, loader in LOADERS.items() if path.name.startswith(prefix))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_loads(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # relative paths in the configs resolve against the repository root
    assert _loader(path)(path) is not None


def test_every_config_has_a_loader():
    names = [p.name for p in CONFIGS.glob("*.yaml")]
    assert names and all(any(n.startswith(prefix) for prefix in LOADERS) for n in names)


def test_the_demo_pipeline_names_a_config_for_each_benchmark(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    pipeline = load_pipeline_config(CONFIGS / "pipeline_demo.yaml")
    for benchmark in pipeline.benchmarks:
        config = load_finetune_config(
            benchmark.overrides["config"], overrides={"data": {"tokenizer": "configs/pipeline_demo.yaml"}}
        )
        assert config.task == benchmark.task


def test_a_benchmark_starting_from_itc_needs_the_itc_step():
    from flows.steps.config import PipelineConfig

    base = {"run_dir": "/tmp/unused", "preprocess": "configs/preprocess_demo.yaml"}
    benchmark = {"task": "coco_retrieval", "init": "itc"}
    with pytest.raises(ValueError, match=r"\['coco_retrieval'\] start from the ITC checkpoint"):
        PipelineConfig.model_validate(base | {"benchmarks": [benchmark]})
    config = PipelineConfig.model_validate(base | {"benchmarks": [benchmark], "itc": {"recipe": "itc_tiny_cpu"}})
    assert config.benchmarks[0].init == "itc"
    with pytest.raises(ValueError, match="init"):
        PipelineConfig.model_validate(base | {"benchmarks": [{"task": "vqav2", "init": "released"}]})
