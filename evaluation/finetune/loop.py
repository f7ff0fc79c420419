"""The fine-tuning kind of the training runtime (`beit3_core.runtime.loop`): one per Ray Train rank (gloo DDP on
CPU, NCCL on GPUs).

- Data: `DistributedSampler` (shuffle seeded by the run seed, reseeded per epoch, `drop_last`) over the task's
  training split, built with the task's `dataset_augmentations` from the config's `augment` section; the
  task's `loss_augmentations` (Mixup/CutMix) go to `task.loss`. Augmentation and drop path draw from torch's
  generator, reseeded from (seed, epoch, rank) at the start of every epoch.
- Optimization: AdamW over `layer_decay_groups` (the release's layer-wise LR decay and weight-decay exemptions);
  per-step linear warmup then cosine to `min_lr` (`beit3_core.runtime.schedule`), scaled per group by `lr_scale`;
  optional gradient clipping.
- Checkpoints: the runtime's, one per epoch (`checkpoint_every` = steps per epoch). A run restored by Ray
  after a failure restarts at the next epoch and, because the data order and every random draw are functions
  of (seed, epoch, rank), redoes it as an uninterrupted run would.
- Logging: the runtime's meter (window means over steps and ranks) and rank 0's MLflow logging.

DDP wraps `TaskLoss`, a module whose forward IS `task.loss`, so everything the loss touches (e.g. the retrieval
logit scale, the all-gathered features) runs inside the DDP forward, and parameters a task never uses (the text
experts for ImageNet) are found by `find_unused_parameters`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from beit3_core.runtime.loop import Schedule, TrainingKind, WorkerContext, run_worker
from beit3_core.runtime.precision import step_autocast
from evaluation.finetune.config import FinetuneConfig, build_finetune_config
from evaluation.finetune.predict import to_device
from evaluation.finetune.weights import build_task_model, heads_to_copy, initialise, save_task_checkpoint
from evaluation.tasks import Task, get_task, layer_decay_groups

logger = logging.getLogger(__name__)


class TaskLoss(nn.Module):
    """`forward(batch, step)` = `task.loss(model, batch, step, **options)`: the unit DDP synchronises."""

    def __init__(self, task: Task, model: nn.Module, options: dict[str, Any] | None = None):
        super().__init__()
        self.task, self.model, self.options = task, model, dict(options or {})

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.task.loss(self.model, batch, step, **self.options)


def load_tokenizer(path: str | None):
    from beit3_core.text_tokenizer import XLMRTokenizer

    return XLMRTokenizer(path) if path else None


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return seed * 1_000_003 + epoch * 1009 + rank


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. `loop_config`: "config" (FinetuneConfig dict with absolute paths), "backbone"
    (BEiT3Config overrides), "head_options", plus the runtime's keys."""
    run_worker(FinetuneKind, loop_config)


class FinetuneKind(TrainingKind):
    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.cfg = cfg = build_finetune_config(ctx.loop_config["config"]["task"], ctx.loop_config["config"])
        self.task = get_task(cfg.task)
        self.run, self.grad_clip = cfg.run, cfg.optim.grad_clip
        self.sampler, self.loader = _train_loader(cfg, self.task, ctx.rank, ctx.world_size)
        self.steps_per_epoch = self.checkpoint_every = len(self.loader)
        total = cfg.run.epochs * self.steps_per_epoch
        warmup = int(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.schedule = Schedule(total, warmup, cfg.optim.lr, cfg.optim.min_lr)

        torch.manual_seed(cfg.run.seed)  # identical initial heads on every rank
        backbone, self.head_options = ctx.loop_config["backbone"], ctx.loop_config["head_options"]
        self.model = build_task_model(self.task, cfg.model.name, backbone, self.head_options)
        if cfg.model.init_checkpoint:
            initialise(self.model, cfg.model.init_checkpoint, heads_to_copy(self.task))
        o = cfg.optim
        groups = layer_decay_groups(self.model, o.lr, o.layer_decay, o.weight_decay, o.head_lr_scale)
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)

    def start(self, start_step: int) -> None:
        trained = TaskLoss(self.task, self.model, self.cfg.task_augmentations("loss")).to(self.ctx.device)
        if torch.distributed.is_initialized():  # under Ray Train (DDP for more than one rank)
            import ray.train.torch

            trained = ray.train.torch.prepare_model(trained, parallel_strategy_kwargs={"find_unused_parameters": True})
        self.trained = trained
        self.autocast = step_autocast(self.ctx.device, False, self.cfg.run.cpu_bf16)
        self.batches = self._batches(start_step // self.steps_per_epoch)

    def _batches(self, first_epoch: int):
        for epoch in range(first_epoch, self.cfg.run.epochs):
            self.sampler.set_epoch(epoch)
            torch.manual_seed(epoch_seed(self.cfg.run.seed, epoch, self.ctx.rank))
            yield from self.loader

    def step(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        batch = next(self.batches)
        with self.autocast:
            loss, metrics = self.trained(to_device(batch, self.ctx.device), step)
        loss.float().backward()
        return metrics, {"samples": self.cfg.data.batch_size // self.ctx.world_size}

    def log_extras(self, step: int) -> dict[str, float]:
        return {"epoch": (step - 1) // self.steps_per_epoch + 1}

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def state_extras(self, step: int) -> dict:
        return {"epoch": step // self.steps_per_epoch}

    def write_model(self, path: Path, state_dict: dict | None) -> None:
        save_task_checkpoint(self.model, path, self.cfg.task, self.cfg.model.name, self.head_options)

    def read_model(self, path: Path) -> None:
        self.model.load_state_dict(load_file(str(path)), strict=True)


def train_dataset(cfg: FinetuneConfig, task: Task, tokenizer: Any) -> Dataset:
    """The training split with the data options and the task's dataset augmentations (`cfg.augment`)."""
    options = cfg.data.options | cfg.task_augmentations("dataset")
    return task.dataset(cfg.data.train_split, cfg.data.root, tokenizer, cfg.model.img_size, **options)


def _train_loader(cfg, task: Task, rank: int, world_size: int) -> tuple[DistributedSampler, DataLoader]:
    """This rank's share of the training split: seeded shuffle per epoch, `drop_last`, per-rank batches."""
    dataset = train_dataset(cfg, task, load_tokenizer(cfg.data.tokenizer))
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=cfg.run.seed, drop_last=True)
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size // world_size,
        sampler=sampler,
        collate_fn=task.collate,
        num_workers=cfg.data.loader_workers,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training examples make no batch of {cfg.data.batch_size}")
    return sampler, loader
