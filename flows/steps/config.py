"""The pipeline config: one YAML file with the run directory and one section per stage, validated with pydantic.

    run_dir: runs/pipeline-demo                 # every output, cache record and the MLflow store live here
    preprocess: configs/preprocess_demo.yaml    # a preprocessing YAML, or the same mapping inline
    pretrain:
      recipe: tiny_cpu                          # a beit3_core recipe (or `config: path/to/pretrain.yaml`)
      overrides: {run: {steps: 100}}            # section overrides, as in `beit3 pretrain --set`
    benchmarks:                                 # task names, or {task, overrides}
      - vqav2
      - {task: nlvr2, overrides: {epochs: 1}}
    execution: {io_retries: 2, retry_delay_seconds: [2, 10]}

Relative paths resolve against the current directory, as in the preprocessing config. The pipeline owns the
output locations (whatever the referenced files say), so every step writes to a deterministic path:
preprocessing to `<run_dir>/shards`; pretraining and fine-tuning runs (Ray Train checkpoints, final models) to
`<storage>/pretrain` and `<storage>/finetune/runs`, where `storage` is a shared path or a pyarrow filesystem
URI (`s3://bucket/beit3`, `gs://...`, `hdfs://...`), required on multi-node clusters, and defaults to the run
directory. An explicit `pretrain.overrides.run.storage_path` or a benchmark's `storage_path` override wins.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from beit3_core.train.config import PretrainConfig, build_config, load_config
from preprocessing.config import PreprocessConfig, load_preprocess_config

PIPELINE_EXPERIMENT = "beit3-pipeline"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainSection(_Strict):
    recipe: str = "tiny_cpu"
    config: str | None = None
    """A `beit3 pretrain` YAML (recipe + overrides); `overrides` below apply on top of it."""
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Benchmark(_Strict):
    task: str = Field(pattern=r"^[a-z0-9_]+$")
    overrides: dict[str, Any] = Field(default_factory=dict)
    """The task's fine-tuning config, passed to `evaluation.finetune.run_finetune`."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"task": value} if isinstance(value, str) else value


class Execution(_Strict):
    io_retries: int = Field(2, ge=0)
    """Retries of the I/O steps (ingest, report); compute steps rely on Ray's own fault tolerance."""
    retry_delay_seconds: list[float] = Field(default_factory=lambda: [2.0, 10.0])


class PipelineConfig(_Strict):
    run_dir: Path
    preprocess: str | dict[str, Any]
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    benchmarks: list[Benchmark] = Field(default_factory=list)
    execution: Execution = Field(default_factory=Execution)
    mlflow_experiment: str = PIPELINE_EXPERIMENT
    storage: str | None = None
    """Where pretraining and fine-tuning runs are stored: a shared path or a pyarrow filesystem URI; default
    the run directory."""

    @field_validator("run_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("storage")
    @classmethod
    def _absolute_storage(cls, value: str | None) -> str | None:
        if not value:
            return None
        return value.rstrip("/") if "://" in value else str(Path(value).resolve())

    def storage_location(self, *parts: str) -> str:
        """`<storage>/<parts>`: a local path or a URI."""
        return "/".join([self.storage or str(self.run_dir), *parts])

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, value: list[Benchmark]) -> list[Benchmark]:
        names = [b.task for b in value]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark tasks must be unique, got {names}")
        return value

    @property
    def shards_dir(self) -> Path:
        return self.run_dir / "shards"

    def fingerprint(self) -> str:
        """Hash of the whole config file as validated (the MLflow `beit3.config_hash` tag)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return PipelineConfig.model_validate(raw)


def resolve_preprocess(cfg: PipelineConfig) -> PreprocessConfig:
    """The preprocessing config with its output moved to `<run_dir>/shards`."""
    overrides = {"output": str(cfg.shards_dir)}
    if isinstance(cfg.preprocess, str):
        return load_preprocess_config(cfg.preprocess, overrides)
    inline = cfg.run_dir / ".state" / "preprocess.yaml"
    inline.parent.mkdir(parents=True, exist_ok=True)
    inline.write_text(yaml.safe_dump(cfg.preprocess))
    return load_preprocess_config(inline, overrides)


def resolve_pretrain(cfg: PipelineConfig, tracking_uri: str, ray_address: str | None) -> PretrainConfig:
    """The pretraining config reading the pipeline's shards and storing runs in `<storage>/pretrain` (or the
    `storage_path` its overrides name)."""
    storage = cfg.pretrain.overrides.get("run", {}).get("storage_path") or cfg.storage_location("pretrain")
    forced = {
        "data": {"shards": str(cfg.shards_dir)},
        "run": {
            "storage_path": storage if "://" in storage else str(Path(storage).resolve()),
            "mlflow_tracking_uri": tracking_uri,
            "mlflow_experiment": cfg.mlflow_experiment,
            "ray_address": ray_address,
        },
    }
    overrides = _merge(cfg.pretrain.overrides, forced)
    if cfg.pretrain.config:
        return load_config(cfg.pretrain.config, overrides)
    return build_config(cfg.pretrain.recipe, overrides)


def preprocess_config_hash(cfg: PreprocessConfig) -> str:
    """Everything in the preprocessing config that shapes the shards (not the Ray address)."""
    return cfg.section_hash("output", "sources", "text", "visual", "views", "shards", "validation", "seed")


def benchmark_config(benchmark: Benchmark, cfg: PipelineConfig, pre_cfg: PreprocessConfig) -> dict[str, Any]:
    """The task config as `run_finetune` sees it: the benchmark's overrides over the pipeline's defaults
    (the shards' SentencePiece model, Ray Train storage in `<storage>/finetune/runs`), sorted and JSON-plain."""
    defaults = {
        "tokenizer": pre_cfg.text.spm_model or str(Path(pre_cfg.output) / "tokenizers" / "spm.model"),
        "storage_path": cfg.storage_location("finetune", "runs"),
    }
    return json.loads(json.dumps(defaults | benchmark.overrides, sort_keys=True, default=str))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
