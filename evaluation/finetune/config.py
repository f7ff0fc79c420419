"""Fine-tuning configuration: one typed tree whose defaults come from the task's released recipe.

Precedence, lowest first: the dataclass defaults, the task's recipe (`task.recipes["base"]`, or `"large"` for a
large backbone), then the YAML file / dict. A YAML file looks like

    task: imagenet
    data: {root: runs/demo/benchmarks/imagenet, batch_size: 32}
    model: {name: beit3_tiny, init_checkpoint: runs/pretrain/.../final/model.safetensors}
    run: {epochs: 3}
    augment: {mixup: 0.0, cutmix: 0.0}

Dicts may also use flat keys for fields whose name is unique across sections (`epochs: 1`, `output_dir: ...`,
`mlflow_tracking_uri: ...`: what the pipeline's benchmark step passes) and a `config: path.yaml` key naming a
YAML file the rest of the dict overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beit3_core.runtime.config import ConfigTree, RunSettings, absolute, build_tree, merge, read_yaml

# Recipe key -> (section, field).
RECIPE_FIELDS = {
    "epochs": ("run", "epochs"),
    "batch_size": ("data", "batch_size"),
    "img_size": ("model", "img_size"),
    "drop_path": ("model", "drop_path_rate"),
    "lr": ("optim", "lr"),
    "min_lr": ("optim", "min_lr"),
    "layer_decay": ("optim", "layer_decay"),
    "weight_decay": ("optim", "weight_decay"),
    "warmup_epochs": ("optim", "warmup_epochs"),
    "betas": ("optim", "betas"),
    "task_head_lr_weight": ("optim", "head_lr_scale"),
    "randaug": ("augment", "randaug"),
    "reprob": ("augment", "reprob"),
    "mixup": ("augment", "mixup"),
    "cutmix": ("augment", "cutmix"),
}


@dataclass(kw_only=True)
class DataSection:
    root: str = ""
    """The benchmark's official files (layout in the task module's docstring); required."""
    options: dict = field(default_factory=dict)
    """Keyword options of `task.dataset` (e.g. `{min_answer_count: 1}` for a miniature VQAv2)."""
    tokenizer: str | None = None
    """SentencePiece model read by `XLMRTokenizer`; required by every task with text."""
    batch_size: int = 32
    """Global batch per optimizer step, split evenly over the Ray Train workers."""
    eval_batch_size: int | None = None
    """Default: 1.5 x the per-worker batch, as the release does."""
    eval_split: str | None = None
    """Default: `val` for imagenet, vqav2 and ade20k, `test` otherwise."""
    train_split: str = "train"
    loader_workers: int = 0
    """DataLoader worker processes per rank (0 = load in the training process)."""


@dataclass(kw_only=True)
class ModelSection:
    name: str = "beit3_base_patch16_224"
    """A `beit3_core.list_models()` name; with one of our safetensors checkpoints its shape comes from the file."""
    overrides: dict = field(default_factory=dict)
    """BEiT3Config fields (e.g. tiny test dims)."""
    head_options: dict = field(default_factory=dict)
    """`task.build_model` head options; `num_classes` / `num_answers` default to the training split's."""
    init_checkpoint: str | None = None
    """Ours (`.safetensors`: backbone, MDM or fine-tuned task model), a released `.pth`, or None (random init)."""
    img_size: int = 224
    drop_path_rate: float = 0.1


@dataclass(kw_only=True)
class OptimSection:
    lr: float = 1e-4
    min_lr: float = 1e-6
    layer_decay: float = 1.0
    """Layer-wise LR decay (1.0 = off)."""
    head_lr_scale: float = 1.0
    """The release's `--task_head_lr_weight` (VQAv2: 20); only without layer decay."""
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    """Max gradient norm; None = no clipping (the release's default). The norm is logged either way."""


@dataclass(kw_only=True)
class AugmentSection:
    """Train-split augmentation (`evaluation.tasks.augment`): off here, the task recipe turns on what it released.

    A task applies only the fields in its `dataset_augmentations` / `loss_augmentations`; turning on another is
    an error.
    """

    randaug: str | bool = False
    """ImageNet: a timm RandAugment string ("rand-m9-mstd0.5-inc1"); vision-language tasks: true = the release's
    RandomAugment(2, 7); false = off."""
    reprob: float = 0.0
    """Random-erasing probability (ImageNet)."""
    mixup: float = 0.0
    """Mixup Beta alpha (ImageNet); 0 = off."""
    cutmix: float = 0.0
    """CutMix Beta alpha (ImageNet); 0 = off. With both on, each batch picks one (p = 0.5)."""

    def __post_init__(self) -> None:
        from evaluation.tasks.augment import parse_rand_augment

        if isinstance(self.randaug, str) and self.randaug:
            parse_rand_augment(self.randaug)
        if not 0 <= self.reprob <= 1 or self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"augment: need 0 <= reprob <= 1, mixup >= 0, cutmix >= 0; got {self}")


@dataclass(kw_only=True)
class RunSection(RunSettings):
    epochs: int = 10
    storage_path: str = "runs/finetune"
    output_dir: str | None = None
    """Where the fine-tuned model and the submission go; default `<storage_path>/<run name>/final`."""
    mlflow_experiment: str = "beit3-finetune"

    VOLATILE = (*RunSettings.VOLATILE, "output_dir")


SECTIONS = {
    "data": DataSection,
    "model": ModelSection,
    "optim": OptimSection,
    "augment": AugmentSection,
    "run": RunSection,
}


@dataclass(kw_only=True)
class FinetuneConfig(ConfigTree):
    task: str
    """An `evaluation.tasks` name."""
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        if self.run.epochs < 1 or self.data.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.run.epochs}, {self.data.batch_size}")
        if self.data.batch_size % self.run.num_workers:
            raise ValueError(
                f"batch_size {self.data.batch_size} must be a multiple of run.num_workers {self.run.num_workers}"
            )
        if self.optim.head_lr_scale != 1.0 and self.optim.layer_decay != 1.0:
            raise ValueError("optim.head_lr_scale applies only without layer decay (optim.layer_decay: 1.0)")
        if _task(self.task).reads_text and not self.data.tokenizer:
            raise ValueError(f"task {self.task!r} reads text: set data.tokenizer to a SentencePiece model")
        unused = sorted(set(self.active_augmentations()) - set(self.task_augmentations()))
        if unused:
            raise ValueError(f"task {self.task!r} does not apply augment.{', augment.'.join(unused)}: turn it off")

    def active_augmentations(self) -> dict[str, Any]:
        """The `augment` fields that are on (true, non-empty, > 0)."""
        return {name: value for name, value in dataclasses.asdict(self.augment).items() if value}

    def task_augmentations(self, kind: str = "all") -> dict[str, Any]:
        """`augment` fields the task applies: `kind` "dataset" (options of the training split), "loss" or "all"."""
        task = _task(self.task)
        names = {"dataset": task.dataset_augmentations, "loss": task.loss_augmentations}
        names["all"] = names["dataset"] + names["loss"]
        return {name: getattr(self.augment, name) for name in names[kind]}

    @property
    def eval_split(self) -> str:
        return self.data.eval_split or _task(self.task).eval_split

    @property
    def eval_batch_size(self) -> int:
        return self.data.eval_batch_size or max(1, int(1.5 * self.data.batch_size // self.run.num_workers))


def _task(name: str):
    from evaluation.tasks import get_task  # the tasks import this module's sections: resolve at call time

    return get_task(name)


def recipe_overrides(task_name: str, model_name: str) -> dict[str, dict[str, Any]]:
    """The task's released recipe as nested config overrides (large recipe for a large backbone)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in _task(task_name).recipe(model_name).items():
        if key in RECIPE_FIELDS:
            section, name = RECIPE_FIELDS[key]
            out.setdefault(section, {})[name] = value
    return out


def nest(raw: dict[str, Any]) -> dict[str, Any]:
    """Sections as they are; flat keys moved into the one section that has a field of that name."""
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(section)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"config section {key!r} must be a mapping, got {value!r}")
            out[key] = merge(out.get(key, {}), value)
        elif key in ("task", "config"):
            out[key] = value
        elif len(owners.get(key, [])) == 1:
            out = merge(out, {owners[key][0]: {key: value}})
        else:
            where = f"one of the sections {owners[key]}" if key in owners else f"no section of {sorted(SECTIONS)}"
            raise ValueError(f"unknown or ambiguous config key {key!r} (found in {where}); use section.field")
    return out


def build_finetune_config(task: str, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Defaults < the task recipe < `overrides` (nested or flat, optionally with `config: file.yaml`)."""
    overrides = nest(dict(overrides or {}))
    if "config" in overrides:
        overrides = merge(_read_yaml(overrides.pop("config")), overrides)
    named = overrides.pop("task", task)
    if named != task:
        raise ValueError(f"config is for task {named!r}, not {task!r}")
    model_name = overrides.get("model", {}).get("name", ModelSection().name)
    return build_tree(FinetuneConfig, merge(recipe_overrides(task, model_name), overrides), task=task)


def load_finetune_config(path: str | Path, task: str | None = None, overrides: dict | None = None) -> FinetuneConfig:
    """Read a YAML file (`task:` plus sections); `task` (if given) must agree with the file's."""
    raw = _read_yaml(path)
    name = task or raw.get("task")
    if not name:
        raise ValueError(f"{path}: no task given and no `task:` in the file")
    return build_finetune_config(name, merge(raw, nest(overrides or {})))


def to_finetune_config(task: str, config: FinetuneConfig | dict | str | Path) -> FinetuneConfig:
    if isinstance(config, FinetuneConfig):
        if config.task != task:
            raise ValueError(f"config is for task {config.task!r}, not {task!r}")
        return config
    if isinstance(config, str | Path):
        return load_finetune_config(config, task)
    return build_finetune_config(task, config)


def resolve_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """A copy with local paths absolute (Ray workers run in another directory)."""
    data = dataclasses.replace(cfg.data, root=absolute(cfg.data.root), tokenizer=absolute(cfg.data.tokenizer))
    model = dataclasses.replace(cfg.model, init_checkpoint=absolute(cfg.model.init_checkpoint))
    run = dataclasses.replace(
        cfg.run, storage_path=absolute(cfg.run.storage_path), output_dir=absolute(cfg.run.output_dir)
    )
    return dataclasses.replace(cfg, data=data, model=model, run=run)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    return nest(read_yaml(path))
