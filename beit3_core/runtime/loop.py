"""The per-worker training loop of every training kind, run by Ray Train (one process per rank).

The runtime owns what every kind does the same way: the rank and device, restoring the last checkpoint, the LR
schedule (`lr_scale` per param group), gradient clipping, the optimizer step, the meter, rank 0's MLflow
logging and progress events, checkpoints every `checkpoint_every` steps and at the end, and fault injection.
A kind (`TrainingKind`) supplies its model and optimizer, its batches from a given step on, and its step
(forward and backward of one optimizer step).

Exactness: a kind whose batches and random draws are functions of (seed, step, rank) resumes from a checkpoint
at step c by redoing steps c+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from beit3_core.runtime import checkpoint as ckpt
from beit3_core.runtime.atomic import copy_atomic
from beit3_core.runtime.faults import kill_once
from beit3_core.runtime.meter import Meter
from beit3_core.runtime.progress import WorkerProgress
from beit3_core.runtime.schedule import cosine_with_warmup, set_lr
from beit3_core.runtime.tracking import RankZeroLogger

logger = logging.getLogger(__name__)


@dataclass
class Schedule:
    """Linear warmup over `warmup_steps`, then cosine to `min_lr` at `total_steps`."""

    total_steps: int
    warmup_steps: int
    lr: float
    min_lr: float

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (1-based)."""
        return cosine_with_warmup(step - 1, self.total_steps, self.warmup_steps, self.lr, self.min_lr)


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    loop_config: dict


class TrainingKind:
    """What a training kind supplies. `__init__(ctx)` builds `model` (unwrapped: checkpoints and clipping read it),
    `optimizer`, `schedule`, `run` (the config's `RunSettings`) and `checkpoint_every`; `start(step)` prepares the
    batches after step `step` (and wraps the model for data parallelism); `step(step)` runs forward and backward
    of one optimizer step and returns its metrics (0-d tensors) and counts for the meter."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    run: Any
    checkpoint_every: int
    grad_clip: float | None = None
    metric_names: list[str] | None = None
    """Declared when some steps lack some metrics (they count as 0); default: the first step's names."""
    sharded: bool = False
    """FSDP2: every rank saves its shards."""

    def start(self, start_step: int) -> None:
        raise NotImplementedError

    def step(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """(metrics, counts) with counts among `samples`, `tokens`, `flops` of this rank."""
        raise NotImplementedError

    def log_extras(self, step: int) -> dict[str, float]:
        return {}

    def config_dict(self) -> dict:
        raise NotImplementedError

    def state_extras(self, step: int) -> dict:
        """Fields added to train_state.json (the data position, the epoch)."""
        return {}

    def write_model(self, path: Path, state_dict: dict | None) -> None:
        raise NotImplementedError

    def read_model(self, path: Path) -> None:
        raise NotImplementedError


def run_worker(kind_cls: type[TrainingKind], loop_config: dict) -> None:
    """Ray Train entry point body: `loop_config` holds the kind's config plus "mlflow_run_id", "tracking_uri" and
    "progress" (the driver's progress board)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    ctx = WorkerContext(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(), loop_config)
    kind = kind_cls(ctx)
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, int(kind.run.cpus_per_worker)))
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start_step = ckpt.load_state(Path(folder), kind.read_model, kind.optimizer, kind.model)["step"]
        logger.info("rank %d resumed from step %d", ctx.rank, start_step)
    kind.start(start_step)
    train(kind, ctx, start_step)


def run_local(
    kind_cls: type[TrainingKind], loop_config: dict, out_dir: Path | None = None, on_log=None
) -> TrainingKind:
    """One rank in this process, without Ray (smoke runs, tests): the same kind and loop as a Ray Train rank.
    With `out_dir`, every checkpoint folder replaces the previous one there. Returns the trained kind."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = WorkerContext(rank=0, world_size=1, device=device, loop_config=loop_config)
    kind = kind_cls(ctx)
    kind.start(0)

    def keep(metrics: dict, folder: Path | None) -> None:
        if out_dir is not None and folder is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for file in folder.iterdir():
                copy_atomic(file, out_dir / file.name)

    train(kind, ctx, 0, report=keep, on_log=on_log)
    return kind


def train(kind: TrainingKind, ctx: WorkerContext, start_step: int, report=None, on_log=None) -> None:
    """Steps start_step+1 .. total of `kind`. `report(metrics, folder or None)` hands over checkpoints (default:
    Ray Train's); `on_log(metrics)` sees every logged window (in-process runs read the loss history there)."""
    run, total = kind.run, kind.schedule.total_steps
    report = report or _ray_report
    rank0 = ctx.rank == 0 and ctx.loop_config.get("mlflow_run_id")
    mlflow = RankZeroLogger(ctx.loop_config["tracking_uri"], ctx.loop_config["mlflow_run_id"]) if rank0 else None
    progress = WorkerProgress(ctx.loop_config, ctx.rank, total, start_step)
    meter = Meter(ctx.device, kind.metric_names and [*kind.metric_names, "grad_norm"])
    max_norm = kind.grad_clip if kind.grad_clip is not None else math.inf
    logged: dict[str, float] = {}
    kind.model.train()
    for step in range(start_step + 1, total + 1):
        kill_once(run.fault_injection, ctx.rank, step)
        lr = kind.schedule.lr_at(step)
        set_lr(kind.optimizer, lr)
        metrics, counts = kind.step(step)
        grad_norm = torch.nn.utils.clip_grad_norm_(kind.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        kind.optimizer.step()
        kind.optimizer.zero_grad(set_to_none=True)
        meter.update(metrics | {"grad_norm": grad_norm}, **counts)
        if step % run.log_every == 0 or step == total:
            logged = meter.report() | {"step": step, "lr": lr} | kind.log_extras(step)
            if mlflow is not None:
                mlflow.log(logged, step)
            progress.log(step, logged)
            if on_log is not None:
                on_log(logged)
        if step % kind.checkpoint_every == 0 or step == total:
            _checkpoint(kind, ctx, step, logged or {"step": step}, report)


def _checkpoint(kind: TrainingKind, ctx: WorkerContext, step: int, metrics: dict, report) -> None:
    """Every rank reports. Unsharded: rank 0 attaches the state folder. Sharded: every rank attaches the folder of
    its shards and Ray merges them into one checkpoint (persisted, then registered atomically)."""
    state = {"step": step, "config": kind.config_dict()} | kind.state_extras(step)
    metrics = metrics | {"step": step}
    if kind.sharded:
        with tempfile.TemporaryDirectory() as tmp:
            final = step == kind.schedule.total_steps
            writer = kind.write_model if final else None
            ckpt.save_sharded_state(Path(tmp), kind.model, kind.optimizer, state, ctx.rank, writer)
            report(metrics, Path(tmp))
        return
    if ctx.rank != 0:
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save_state(Path(tmp), kind.write_model, kind.optimizer, state)
        report(metrics, Path(tmp))


def _ray_report(metrics: dict, folder: Path | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
    ray.train.report(metrics, checkpoint=checkpoint)
