"""The benchmark `Task` contract, the `TASKS` registry and the release's layer-wise learning-rate decay.

A task bundles what fine-tuning and evaluating one BEiT-3 benchmark needs (BEiT-3, arXiv 2208.10442; checked
against microsoft/unilm `beit3/` at 768a3c8: `modeling_finetune.py`, `datasets.py`, `engine_for_finetuning.py`,
`optim_factory.py`): the released recipe, the model with the released head names (so fine-tuned checkpoints
load strictly), a dataset over the official files, the loss, prediction records, metrics through
`evaluation.metrics`, and the official submission file. Training loops and orchestration live elsewhere.

Prediction records are plain dicts, one per example, of ids, numbers, lists or CPU tensors (retrieval
features), so they can be gathered across workers; `evaluate` and `write_submission` receive the dataset
because the records hold ids and indices while the answer vocabulary, tokenizer and ground truth belong to
the split.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from beit3_core.model import BEiT3

Batch = dict[str, Any]
Record = dict[str, Any]


class Task(abc.ABC):
    """One benchmark. Subclasses set `name` and `recipes` and implement the abstract methods."""

    name: str
    recipes: Mapping[str, Mapping[str, Any]]
    """Released fine-tuning defaults per backbone size ("base", "large")."""
    selection_key: str
    """Metric the release keeps the best epoch by."""
    dataset_augmentations: tuple[str, ...] = ()
    """Fields of the fine-tuning config's `augment` section that `dataset` takes as options (train split)."""
    loss_augmentations: tuple[str, ...] = ()
    """Fields of the `augment` section that the training loop passes to `loss` as keyword options."""
    eval_split: str = "test"
    """The split a fine-tuned model is evaluated on by default (the one with public ground truth)."""
    submission_suffix: str = ".json"
    """File suffix of the official submission format."""
    reads_text: bool = True
    """Whether the task's inputs include text, so a SentencePiece model (`data.tokenizer`) is required."""
    pretrained_heads: tuple[str, ...] = ()
    """Prefixes of pretraining heads (e.g. `mlm_head.`) the task model keeps from an MDM checkpoint."""

    def recipe(self, model_name: str = "base") -> dict[str, Any]:
        """The released recipe for a backbone: `recipes["large"]` for a large model (where one was released),
        else the base recipe."""
        size = "large" if "large" in model_name and "large" in self.recipes else "base"
        return dict(self.recipes[size])

    def submission_name(self, split: str) -> str:
        return f"{self.name}_{split}_submission{self.submission_suffix}"

    @abc.abstractmethod
    def build_model(self, backbone_name: str, **overrides: Any) -> nn.Module:
        """Backbone `beit3` plus the task head, with the released module names and initialisation.

        Args:
            backbone_name: A `beit3_core.list_models()` name.
            **overrides: `BEiT3Config` fields (e.g. `img_size`, `drop_path_rate`) and the task's own head
                options; `normalize_output` is fixed by the task.
        """

    @abc.abstractmethod
    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> Dataset:
        """The split read from the official files under `root` (layout in the task module's docstring)."""

    def collate(self, items: Sequence[Mapping[str, Any]]) -> Batch:
        """Stacks tensors and numbers; keeps other fields as lists."""
        return default_collate(items)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss and detached metrics of one batch; `step` is the global optimizer step.

        Tasks with `loss_augmentations` also take those as keyword options (batch-level augmentation such as
        Mixup); the training loop passes them, other callers may leave them at their off defaults.
        """

    @abc.abstractmethod
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        """One record per example (call with the model in eval mode); `tokenizer` is the run's text tokenizer
        (tasks that decode text use it, the others ignore it)."""

    @abc.abstractmethod
    def evaluate(self, records: Sequence[Record], dataset: Dataset) -> dict[str, Any]:
        """Metrics of the records against the split's ground truth (via `evaluation.metrics`)."""

    @abc.abstractmethod
    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: Dataset) -> Path:
        """Writes the records in the benchmark's official submission format; returns the path."""

    def baseline(self, train_set: Dataset, eval_set: Dataset) -> dict[str, Any]:
        """The trivial baseline on `eval_set`: what an input-blind predictor (majority class, a constant answer or
        caption, a random ranking) scores with this task's official scorer, with its standard error on that split
        (the record format of `evaluation.baselines`). `train_set` is what the predictor may count."""
        raise NotImplementedError(f"task {self.name!r} defines no trivial baseline")


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds `task` to `TASKS` under its name."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called `name`."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def default_collate(items: Sequence[Mapping[str, Any]]) -> Batch:
    """Stacks tensors and builds tensors from bools/ints/floats; other values stay lists."""
    batch: Batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], bool | int | float) and all(isinstance(v, bool | int | float) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def find_backbone(model: nn.Module) -> BEiT3:
    """The single BEiT-3 backbone inside `model`."""
    found = [m for m in model.modules() if isinstance(m, BEiT3)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one BEiT3 backbone in the model, found {len(found)}")
    return found[0]


def layer_ids(model: nn.Module) -> dict[nn.Parameter, int]:
    """Layer id of every parameter for layer-wise LR decay, as the release assigns them.

    The release matches names: "embed" anywhere -> 0, "layers.i" -> i + 1, anything else -> L + 1. Here the
    same ids come from the module tree: the text embedding, the patch embedding (with CLS and mask tokens) and
    both position tables are layer 0, encoder layer i is i + 1, and everything else (final norm, heads, pooler,
    logit scale) is L + 1.
    """
    backbone = find_backbone(model)
    num_layers = len(backbone.encoder.layers)
    ids = {param: num_layers + 1 for param in model.parameters()}
    for module in (backbone.text_embed, backbone.vision_embed, backbone.encoder.embed_positions):
        ids.update({param: 0 for param in module.parameters()})
    for index, layer in enumerate(backbone.encoder.layers):
        ids.update({param: index + 1 for param in layer.parameters()})
    return ids


def no_weight_decay(model: nn.Module) -> set[nn.Parameter]:
    """Parameters the release's fine-tuning optimizer leaves undecayed.

    Every tensor of rank <= 1 (biases, norm gains, the logit scale) plus the model's `no_weight_decay()` set:
    the vision CLS token and the vision position table. Unlike the pretraining rule in `beit3_core.model`, the
    text embedding, the text position table and the mask token ARE decayed (spec architecture.md 3.4).
    """
    backbone = find_backbone(model)
    exempt = {backbone.vision_embed.cls_token, backbone.encoder.embed_positions.A.weight}
    return exempt | {param for param in model.parameters() if param.ndim <= 1}


def layer_decay_groups(
    model: nn.Module, lr: float, decay: float, weight_decay: float, head_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW parameter groups with the release's layer-wise LR decay and weight-decay exemptions.

    Group LR = lr * decay ** (L + 1 - layer_id); each group also carries `lr_scale` so a scheduler can rescale
    it. `head_lr_scale` is the release's `--task_head_lr_weight` (VQAv2: 20): it multiplies the LR of the
    module named `head` (the VQA pooler is not part of it) and only applies without layer decay.

    Args:
        model: A task model holding one `BEiT3` backbone.
        lr: Peak learning rate.
        decay: Layer-wise decay factor; 1.0 switches decay off.
        weight_decay: Decay of the non-exempt parameters.
        head_lr_scale: LR multiplier of `model.head`.

    Returns:
        Groups with `params`, `lr`, `lr_scale`, `weight_decay` and `layer_id`; frozen parameters are left out.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"layer decay must lie in (0, 1], got {decay}")
    if head_lr_scale != 1.0 and decay != 1.0:
        raise ValueError("head_lr_scale only applies without layer decay (the release ignores it otherwise)")
    ids = layer_ids(model)
    exempt = no_weight_decay(model)
    head = getattr(model, "head", None)
    head_params = set(head.parameters()) if isinstance(head, nn.Module) else set()
    top = len(find_backbone(model).encoder.layers) + 1
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        layer_id, decayed, in_head = ids[param], param not in exempt, param in head_params
        key = (layer_id, decayed, in_head)
        if key not in groups:
            scale = decay ** (top - layer_id) * (head_lr_scale if in_head else 1.0)
            groups[key] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decayed else 0.0,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]
