"""Where the pipeline stores pretraining and fine-tuning runs: the configured storage, else the run directory."""

from pathlib import Path

import pytest

from flows.steps.config import Benchmark, PipelineConfig, benchmark_config, resolve_pretrain
from preprocessing.config import PreprocessConfig


def pipeline(tmp_path: Path, **fields) -> PipelineConfig:
    return PipelineConfig.model_validate({"run_dir": str(tmp_path / "run"), "preprocess": "unused.yaml"} | fields)


@pytest.fixture
def pre_cfg(tmp_path: Path) -> PreprocessConfig:
    return PreprocessConfig(output=str(tmp_path / "run" / "shards"), sources=[])


@pytest.mark.parametrize(
    ("storage", "pretrain_path", "finetune_path"),
    [
        (None, "{run}/pretrain", "{run}/finetune/runs"),
        ("s3://bucket/beit3/", "s3://bucket/beit3/pretrain", "s3://bucket/beit3/finetune/runs"),
        ("shared", "{cwd}/shared/pretrain", "{cwd}/shared/finetune/runs"),
    ],
)
def test_runs_go_to_the_configured_storage(tmp_path, pre_cfg, monkeypatch, storage, pretrain_path, finetune_path):
    monkeypatch.chdir(tmp_path)
    cfg = pipeline(tmp_path, **({"storage": storage} if storage else {}))
    names = {"run": str(tmp_path / "run"), "cwd": str(tmp_path)}
    assert resolve_pretrain(cfg, "sqlite:///x.db", None).run.storage_path == pretrain_path.format(**names)
    config = benchmark_config(Benchmark(task="vqav2"), cfg, pre_cfg)
    assert config["storage_path"] == finetune_path.format(**names)


def test_explicit_run_storage_wins(tmp_path, pre_cfg):
    cfg = pipeline(
        tmp_path,
        storage="gs://bucket/all",
        pretrain={"overrides": {"run": {"storage_path": "s3://other/pretrain-runs"}}},
    )
    assert resolve_pretrain(cfg, "sqlite:///x.db", None).run.storage_path == "s3://other/pretrain-runs"
    benchmark = Benchmark(task="nlvr2", overrides={"storage_path": "/mnt/ft"})
    assert benchmark_config(benchmark, cfg, pre_cfg)["storage_path"] == "/mnt/ft"
