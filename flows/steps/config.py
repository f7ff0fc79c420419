"""The pipeline config: one YAML file with the run directory and one section per stage, validated with pydantic.

    run_dir: runs/pipeline-demo                 # every output, cache record and the MLflow store live here
    preprocess: configs/preprocess_demo.yaml    # a preprocessing YAML, or the same mapping inline
    pretrain:
      recipe: tiny_cpu                          # a beit3_core recipe (or `config: path/to/pretrain.yaml`)
      overrides: {run: {steps: 100}}            # section overrides, as in `beit3 pretrain --set`
    benchmarks:                                 # task names, or {task, overrides}
      - vqav2
      - {task: nlvr2, overrides: {epochs: 1}}
      - {task: coco_retrieval, init: itc}       # start from the ITC checkpoint (the released retrieval recipe)
    itc:                                        # optional: ITC tuning of the pretrained checkpoint
      recipe: itc_tiny_cpu
      overrides: {run: {steps: 40}}
    zeroshot:                                   # zero-shot retrieval of the ITC checkpoint (needs `itc`)
      - {unit: flickr30k_zeroshot, root: runs/demo/benchmarks/flickr30k}
    compare_scratch: false                      # also fine-tune each benchmark from random initialisation
    execution: {io_retries: 2, retry_delay_seconds: [2, 10]}

Relative paths resolve against the current directory, as in the preprocessing config. The pipeline owns the
output locations (whatever the referenced files say), so every step writes to a deterministic path:
preprocessing to `<run_dir>/shards`; pretraining, ITC tuning and fine-tuning runs (Ray Train checkpoints, final
models) to `<storage>/pretrain`, `<storage>/itc` and `<storage>/finetune/runs`, where `storage` is a shared path
or a pyarrow filesystem URI (`s3://bucket/beit3`, `gs://...`, `hdfs://...`), required on multi-node clusters,
and defaults to the run directory. An explicit `run.storage_path` in a training section's overrides or a
benchmark's `storage_path` override wins.
"""

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from beit3_core.runtime.config import fingerprint, merge, read_yaml
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


class ZeroShotUnit(_Strict):
    unit: str = Field(pattern=r"^[a-z0-9_]+_zeroshot$")
    root: str
    """The benchmark's Karpathy files (`dataset_flickr30k.json` + images, or `dataset_coco.json` + images)."""
    tokenizer: str | None = None
    """Default: the shards' SentencePiece model (what pretraining and ITC read)."""
    img_size: int = 224
    batch_size: int = 64
    chunk_size: int = 1024
    text_len: int = 64


class Benchmark(_Strict):
    task: str = Field(pattern=r"^[a-z0-9_]+$")
    overrides: dict[str, Any] = Field(default_factory=dict)
    """The task's fine-tuning config, passed to `evaluation.finetune.run_finetune`."""
    init: Literal["pretrain", "itc"] = "pretrain"
    """The checkpoint the fine-tune starts from: the MDM pretraining's, or the ITC step's (the released COCO and
    Flickr30K retrieval fine-tunes start from `beit3_*_itc_patch16_224.pth`; its projections and logit scale are
    kept). The scratch control draws a random model of that checkpoint's architecture."""
    evaluate_also: list[str] = Field(default_factory=list)
    """Units scored with this fine-tune's model on their own evaluation split and data root, e.g. `nocaps` after
    `coco_captioning` (NoCaps has no training set; the paper scores the COCO captioner on it)."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"task": value} if isinstance(value, str) else value


class Execution(_Strict):
    io_retries: int = Field(2, ge=0)
    """Retries of the I/O steps (ingest, report); compute steps rely on Ray's own fault tolerance."""
    retry_delay_seconds: list[float] = Field(default_factory=lambda: [2.0, 10.0])
    max_parallel_finetunes: int = Field(0, ge=0)
    """Fine-tunes in flight at once, started in the order `benchmarks` lists them (0: all at once, and Ray
    starts them in whatever order their resource requests arrive). With a limit that matches what the cluster
    holds, listing the longest fine-tunes first keeps the last one from running alone at the end."""


class PipelineConfig(_Strict):
    run_dir: Path
    preprocess: str | dict[str, Any]
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    benchmarks: list[Benchmark] = Field(default_factory=list)
    itc: PretrainSection | None = None
    """ITC tuning of the pretrained checkpoint (`recipe: itc_tiny_cpu`); None = no ITC step."""
    zeroshot: list[ZeroShotUnit] = Field(default_factory=list)
    execution: Execution = Field(default_factory=Execution)
    mlflow_experiment: str = PIPELINE_EXPERIMENT
    storage: str | None = None
    """Where pretraining and fine-tuning runs are stored: a shared path or a pyarrow filesystem URI; default
    the run directory."""
    compare_scratch: bool = False
    """Also fine-tune every benchmark from random initialisation (same config, budget and seed): the
    `finetune-scratch[<task>]` steps, shown beside the pretrained runs (`beit3 run --compare-scratch`)."""

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

    @model_validator(mode="after")
    def _zeroshot_needs_itc(self) -> "PipelineConfig":
        if self.zeroshot and self.itc is None:
            raise ValueError("zero-shot units evaluate the ITC checkpoint: add an `itc` section")
        from_itc = [b.task for b in self.benchmarks if b.init == "itc"]
        if from_itc and self.itc is None:
            raise ValueError(f"benchmarks {from_itc} start from the ITC checkpoint (init: itc): add an `itc` section")
        units = [z.unit for z in self.zeroshot]
        if len(set(units)) != len(units):
            raise ValueError(f"zero-shot units must be unique, got {units}")
        return self

    @property
    def shards_dir(self) -> Path:
        return self.run_dir / "shards"

    def fingerprint(self) -> str:
        """Hash of the whole config file as validated (the MLflow `beit3.config_hash` tag)."""
        return fingerprint(self.model_dump(mode="json"))


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    return PipelineConfig.model_validate(read_yaml(path))


def resolve_preprocess(cfg: PipelineConfig) -> PreprocessConfig:
    """The preprocessing config with its output moved to `<run_dir>/shards`."""
    overrides = {"output": str(cfg.shards_dir)}
    if isinstance(cfg.preprocess, str):
        return load_preprocess_config(cfg.preprocess, overrides)
    inline = cfg.run_dir / ".state" / "preprocess.yaml"
    inline.parent.mkdir(parents=True, exist_ok=True)
    inline.write_text(yaml.safe_dump(cfg.preprocess))
    return load_preprocess_config(inline, overrides)


def resolve_pretrain(
    cfg: PipelineConfig, tracking_uri: str, ray_address: str | None, stage: str = "pretrain"
) -> PretrainConfig:
    """The pretraining (or, `stage="itc"`, ITC) config reading the pipeline's shards and storing runs in
    `<storage>/<stage>` (or the `storage_path` its overrides name)."""
    section = cfg.pretrain if stage == "pretrain" else cfg.itc
    storage = section.overrides.get("run", {}).get("storage_path") or cfg.storage_location(stage)
    forced = {
        "data": {"shards": str(cfg.shards_dir)},
        "run": {
            "storage_path": storage if "://" in storage else str(Path(storage).resolve()),
            "mlflow_tracking_uri": tracking_uri,
            "mlflow_experiment": cfg.mlflow_experiment,
            "ray_address": ray_address,
        },
    }
    overrides = merge(section.overrides, forced)
    if section.config:
        return load_config(section.config, overrides)
    return build_config(section.recipe, overrides)


def tokenizer_path(pre_cfg: PreprocessConfig) -> str:
    """The SentencePiece model the shards were encoded with."""
    return pre_cfg.text.spm_model or str(Path(pre_cfg.output) / "tokenizers" / "spm.model")


def zeroshot_config(unit: ZeroShotUnit, pre_cfg: PreprocessConfig) -> dict[str, Any]:
    """The unit's evaluation settings as the zero-shot step sees them (paths absolute, JSON-plain)."""
    values = unit.model_dump() | {"root": str(Path(unit.root).resolve())}
    values["tokenizer"] = str(Path(unit.tokenizer).resolve()) if unit.tokenizer else tokenizer_path(pre_cfg)
    return values


def preprocess_config_hash(cfg: PreprocessConfig) -> str:
    """Everything in the preprocessing config that shapes the shards (not the Ray address)."""
    return cfg.section_hash("output", "sources", "text", "visual", "views", "shards", "validation", "seed")


def benchmark_config(benchmark: Benchmark, cfg: PipelineConfig, pre_cfg: PreprocessConfig) -> dict[str, Any]:
    """The task config as `run_finetune` sees it: the benchmark's overrides over the pipeline's defaults
    (the shards' SentencePiece model, Ray Train storage in `<storage>/finetune/runs`), sorted and JSON-plain."""
    defaults = {
        "tokenizer": tokenizer_path(pre_cfg),
        "storage_path": cfg.storage_location("finetune", "runs"),
    }
    return json.loads(json.dumps(defaults | benchmark.overrides, sort_keys=True, default=str))
