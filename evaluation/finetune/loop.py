"""The per-worker fine-tuning loop run by Ray Train (one process per rank, gloo DDP on CPU, NCCL on GPUs).

- Data: `DistributedSampler` (shuffle seeded by the run seed, reseeded per epoch, `drop_last`) over the task's
  training split, built with the task's `dataset_augmentations` from the config's `augment` section; the
  task's `loss_augmentations` (Mixup/CutMix) go to `task.loss`. Augmentation and drop path draw from torch's
  generator, reseeded from (seed, epoch, rank) at the start of every epoch.
- Optimization: AdamW over `layer_decay_groups` (the release's layer-wise LR decay and weight-decay exemptions);
  per-step linear warmup then cosine to `min_lr` (`beit3_core.train.schedule`), scaled per group by `lr_scale`;
  optional gradient clipping.
- Checkpoints: one per epoch (model, optimizer, RNG state, epoch and step) reported by rank 0; other ranks
  report without one. A run restored by Ray after a failure restarts at the next epoch and, because the data
  order and every random draw are functions of (seed, epoch, rank), redoes it as an uninterrupted run would.
- Logging: rank 0 writes the step metrics (averaged over the log window and all ranks) into the driver's
  MLflow run; `.item()` and the all-reduce happen on log steps only.

DDP wraps `TaskLoss`, a module whose forward IS `task.loss`, so everything the loss touches (e.g. the retrieval
logit scale, the all-gathered features) runs inside the DDP forward, and parameters a task never uses (the text
experts for ImageNet) are found by `find_unused_parameters`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from beit3_core.train.faults import kill_once
from beit3_core.train.loop import MlflowRank0Logger as MlflowRank0
from beit3_core.train.progress import WorkerProgress
from beit3_core.train.schedule import cosine_with_warmup
from evaluation.finetune.config import FinetuneConfig, build_finetune_config
from evaluation.finetune.predict import to_device
from evaluation.finetune.weights import build_task_model, heads_to_copy, initialise, save_task_checkpoint
from evaluation.tasks import Task, get_task, layer_decay_groups

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"


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
    """Ray Train entry point.

    `loop_config`: "config" (FinetuneConfig dict with absolute paths), "backbone" (BEiT3Config overrides),
    "head_options", "mlflow_run_id" and "tracking_uri" of the driver's run.
    """
    import ray.train
    import ray.train.torch

    cfg = build_finetune_config(loop_config["config"]["task"], loop_config["config"])
    task = get_task(cfg.task)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))

    sampler, loader = _train_loader(cfg, task, rank, world_size)
    steps_per_epoch = len(loader)
    total_steps = cfg.run.epochs * steps_per_epoch
    warmup_steps = int(cfg.optim.warmup_epochs * steps_per_epoch)

    torch.manual_seed(cfg.run.seed)  # identical initial heads on every rank
    model = build_task_model(task, cfg.model.name, loop_config["backbone"], loop_config["head_options"])
    if cfg.model.init_checkpoint:
        initialise(model, cfg.model.init_checkpoint, heads_to_copy(task))
    groups = layer_decay_groups(
        model, cfg.optim.lr, cfg.optim.layer_decay, cfg.optim.weight_decay, cfg.optim.head_lr_scale
    )
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)

    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start_epoch, step = _load_state(Path(folder), model, optimizer)
        logger.info("rank %d resumed after epoch %d (step %d)", rank, start_epoch, step)

    trained = ray.train.torch.prepare_model(
        TaskLoss(task, model, cfg.task_augmentations("loss")),
        parallel_strategy_kwargs={"find_unused_parameters": True},
    )
    logger_run = MlflowRank0(loop_config) if rank == 0 else None
    meter = _WindowMeter(device)
    progress = WorkerProgress(loop_config, rank, total_steps, step, cfg.data.batch_size)
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    trained.train()
    for epoch in range(start_epoch, cfg.run.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.run.seed, epoch, rank))
        for batch in loader:
            kill_once(cfg.run.fault_injection, rank, step + 1)
            lr = cosine_with_warmup(step, total_steps, warmup_steps, cfg.optim.lr, cfg.optim.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            step += 1
            loss, metrics = trained(to_device(batch, device), step)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.update(metrics | {"grad_norm": grad_norm.detach()})
            if step % cfg.run.log_every == 0 or step == total_steps:
                logged = meter.report() | {"lr": lr, "epoch": epoch + 1}
                if logger_run is not None:
                    logger_run.log(logged, step)
                    progress.log(step, logged)
        _report_epoch(cfg, model, optimizer, epoch + 1, step, rank, loop_config)


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


def _report_epoch(cfg, model: nn.Module, optimizer, epoch: int, step: int, rank: int, loop_config: dict) -> None:
    """Every rank reports; rank 0 attaches the state folder (Ray persists it, then registers it atomically)."""
    import ray.train

    metrics = {"epoch": epoch, "step": step}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_task_checkpoint(model, folder / MODEL_FILE, cfg.task, cfg.model.name, loop_config["head_options"])
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, folder / OPTIMIZER_FILE)
        state = {"epoch": epoch, "step": step, "config": cfg.to_dict()}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore model, optimizer and RNG in place; returns (epochs done, optimizer steps done)."""
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
    extra = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["rng"]["torch"])
    if "cuda" in extra["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(extra["rng"]["cuda"])
    state = json.loads((folder / STATE_FILE).read_text())
    return state["epoch"], state["step"]


class _WindowMeter:
    """Sums detached metrics over the log window; `report` averages them over steps and ranks (host sync)."""

    def __init__(self, device: torch.device):
        self.device, self.sums, self.count = device, {}, 0

    def update(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float().to(self.device)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def report(self) -> dict[str, float]:
        keys = sorted(self.sums)
        totals = torch.stack([self.sums[k] for k in keys]) / self.count
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
            world = dist.get_world_size()
        values = (totals / world).tolist()  # syncs with the device: log steps only
        self.sums, self.count = {}, 0
        return dict(zip(keys, values, strict=True))
