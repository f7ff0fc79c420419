"""The per-worker MDM training loop run by Ray Train (one process per rank).

Exactness: the batch of step s on data rank r is a pure function of (seed, s, r), and drop path draws from a
generator state per (step, data rank), so a run restored from a checkpoint at step c redoes steps c+1.. exactly
as an uninterrupted run would: nothing is skipped and nothing is seen twice. The data ranks (`run.data_ranks`)
are spread over the workers as micro-batches, so a run resumes on fewer workers with the same result (up to
the order of floating-point sums). Gradients are synchronised on the last micro-batch only (DDP `no_sync`,
FSDP2 `set_requires_gradient_sync`).
"""

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import torch

from beit3_core.mdm import BEiT3ForMDM
from beit3_core.optim import build_adamw
from beit3_core.train.checkpointing import load_training_state, save_sharded_state, save_training_state
from beit3_core.train.config import PretrainConfig, build_config
from beit3_core.train.faults import kill_once
from beit3_core.train.metrics import StepMeter
from beit3_core.train.model_setup import build_pretraining_model, gradient_sync, parallelize
from beit3_core.train.progress import WorkerProgress
from beit3_core.train.schedule import cosine_with_warmup
from beit3_core.train.streams import build_step_batches

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point.

    `loop_config`: "config" (PretrainConfig dict), "model_config" (resolved BEiT3Config dict), "data_info"
    ({"mask_id": ...} from the shard manifest), "mlflow_run_id" and "tracking_uri" of the driver's run.
    """
    import ray.train
    import ray.train.torch

    cfg = build_config("tiny_cpu", loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))

    model = build_pretraining_model(cfg, loop_config["model_config"])
    optimizer_model = model
    model = parallelize(model, cfg, device)
    optimizer = build_adamw(
        optimizer_model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps
    )

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_state(Path(folder), optimizer_model, optimizer)
        start_step = state["step"]
        logger.info("rank %d resumed from step %d", rank, start_step)

    logger_run = MlflowRank0Logger(loop_config) if rank == 0 else None
    data_ranks = data_ranks_of(cfg, rank, world_size)
    batches = {
        r: build_step_batches(
            cfg, loop_config["model_config"], loop_config["data_info"], r, num_data_ranks(cfg, world_size), start_step
        )
        for r in data_ranks
    }
    meter = StepMeter(cfg, loop_config["model_config"], device)
    progress = WorkerProgress(loop_config, rank, cfg.run.steps, start_step)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.run.bf16
        else contextlib.nullcontext()
    )
    num_micro = cfg.optim.grad_accum_steps * len(data_ranks)

    model.train()
    for step in range(start_step + 1, cfg.run.steps + 1):
        kill_once(cfg.run.fault_injection, rank, step)
        lr = cosine_with_warmup(step - 1, cfg.run.steps, cfg.optim.warmup_steps, cfg.optim.lr, cfg.optim.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Drop path draws from torch's generator: one generator state per (step, data rank), so a data rank
        # draws the same whichever worker runs it.
        rng = {r: _seeded_states(cfg.run.seed * 1_000_003 + step * 1009 + r, device) for r in data_ranks}

        outputs = []
        for micro in range(num_micro):
            r = data_ranks[micro % len(data_ranks)]
            batch = next(batches[r]).to(device, non_blocking=True)
            _set_states(rng[r], device)
            with gradient_sync(model, enabled=micro == num_micro - 1):
                with autocast:
                    out = model(batch)
                (out["loss"] / num_micro).backward()
            rng[r] = _get_states(device)
            outputs.append((out, batch))
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer_model.parameters(), cfg.optim.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.update(outputs, grad_norm)

        metrics = meter.report(step, lr) if step % cfg.run.log_every == 0 or step == cfg.run.steps else None
        if metrics is not None and logger_run is not None:
            logger_run.log(metrics, step)
            progress.log(step, metrics)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
            _report_checkpoint(cfg, optimizer_model, optimizer, step, rank, metrics or {"step": step})
        elif metrics is not None:
            ray.train.report(metrics)


def data_ranks_of(cfg: PretrainConfig, rank: int, world_size: int) -> list[int]:
    """The data ranks this worker runs: rank, rank + world_size, ... below `run.data_ranks`."""
    total = num_data_ranks(cfg, world_size)
    if total % world_size:
        raise ValueError(f"run.data_ranks={total} is not a multiple of the {world_size} workers")
    return list(range(rank, total, world_size))


def num_data_ranks(cfg: PretrainConfig, world_size: int) -> int:
    return cfg.run.data_ranks or world_size


def _seeded_states(seed: int, device: torch.device) -> tuple:
    """(CPU, CUDA) generator states as `torch.manual_seed(seed)` leaves them; drop path draws on the device."""
    cuda = None
    if device.type == "cuda":
        generator = torch.Generator(device=device).manual_seed(seed)
        cuda = generator.get_state()
    return torch.Generator().manual_seed(seed).get_state(), cuda


def _set_states(states: tuple, device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def _get_states(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _report_checkpoint(cfg: PretrainConfig, model: BEiT3ForMDM, optimizer, step: int, rank: int, metrics: dict):
    """Every rank reports. DDP: rank 0 attaches the state folder. FSDP2: every rank attaches the folder of its
    shards and Ray merges them into one checkpoint (persisted, then registered atomically)."""
    import ray.train

    if cfg.run.strategy == "fsdp":
        with tempfile.TemporaryDirectory() as tmp:
            final = step == cfg.run.steps
            save_sharded_state(Path(tmp), model, optimizer, step, cfg.to_dict(), rank, final)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        return
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_training_state(Path(tmp), model, optimizer, step, {"step": step}, cfg.to_dict())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class MlflowRank0Logger:
    """Rank 0 logs into the run the driver opened (one writer; survives worker restarts with the same run)."""

    def __init__(self, loop_config: dict):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=loop_config["tracking_uri"])
        self.run_id = loop_config["mlflow_run_id"]

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("/", "_"), float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=batch)
