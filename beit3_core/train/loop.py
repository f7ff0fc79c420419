"""The MDM / ITC pretraining kind of the training runtime (`beit3_core.runtime.loop`), one per Ray Train rank.

Exactness: the batch of step s on data rank r is a pure function of (seed, s, r), and drop path draws from a
generator state per (step, data rank), so a run restored from a checkpoint at step c redoes steps c+1.. exactly
as an uninterrupted run would: nothing is skipped and nothing is seen twice. The data ranks (`run.data_ranks`)
are spread over the workers as micro-batches, so a run resumes on fewer workers with the same result (up to
the order of floating-point sums). Gradients are synchronised on the last micro-batch only (DDP `no_sync`,
FSDP2 `set_requires_gradient_sync`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from beit3_core.checkpoint import load_checkpoint, save_checkpoint
from beit3_core.config import BEiT3Config
from beit3_core.itc import ITC_METRICS
from beit3_core.mdm import STREAM_KINDS
from beit3_core.optim import build_adamw
from beit3_core.runtime.loop import Schedule, TrainingKind, WorkerContext, run_worker
from beit3_core.runtime.precision import step_autocast
from beit3_core.train.config import PretrainConfig, build_config
from beit3_core.train.metrics import itc_step_flops, num_tokens, step_flops
from beit3_core.train.model_setup import build_pretraining_model, gradient_sync, parallelize
from beit3_core.train.streams import build_step_batches


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. `loop_config`: "config" (PretrainConfig dict), "model_config" (resolved BEiT3Config
    dict), "data_info" ({"mask_id": ...} from the shard manifest), plus the runtime's keys."""
    run_worker(PretrainKind, loop_config)


class PretrainKind(TrainingKind):
    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.cfg = cfg = build_config("tiny_cpu", ctx.loop_config["config"])
        self.model_config = ctx.loop_config["model_config"]
        self.run, self.checkpoint_every, self.grad_clip = cfg.run, cfg.run.checkpoint_every, cfg.optim.grad_clip
        self.sharded = cfg.run.strategy == "fsdp"
        self.model = build_pretraining_model(cfg, self.model_config)
        # Wrapped before a checkpoint is restored: FSDP2 loads shards onto its own sharding.
        self.wrapped = parallelize(self.model, cfg, ctx.device)
        o = cfg.optim
        self.optimizer = build_adamw(self.model, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps)
        self.schedule = Schedule(cfg.run.steps, o.warmup_steps, o.lr, o.min_lr)
        if cfg.model.objective == "itc":
            self.metric_names, self.flops_of = list(ITC_METRICS), itc_step_flops
        else:
            self.metric_names = [f"{m}/{k}" for k in STREAM_KINDS for m in ("loss", "accuracy")] + ["loss"]
            self.flops_of = step_flops
        self.config = BEiT3Config(**self.model_config)

    def start(self, start_step: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.data_ranks = data_ranks_of(cfg, ctx.rank, ctx.world_size)
        total = num_data_ranks(cfg, ctx.world_size)
        info = ctx.loop_config["data_info"]
        self.batches = {
            r: build_step_batches(cfg, self.model_config, info, r, total, start_step) for r in self.data_ranks
        }
        self.autocast = step_autocast(ctx.device, cfg.run.bf16, cfg.run.cpu_bf16)
        self.num_micro = cfg.optim.grad_accum_steps * len(self.data_ranks)
        self.current_step = start_step

    def step(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        device, self.current_step = self.ctx.device, step
        # Drop path draws from torch's generator: one generator state per (step, data rank), so a data rank
        # draws the same whichever worker runs it.
        rng = {r: _seeded_states(self.cfg.run.seed * 1_000_003 + step * 1009 + r, device) for r in self.data_ranks}
        outputs = []
        for micro in range(self.num_micro):
            r = self.data_ranks[micro % len(self.data_ranks)]
            batch = next(self.batches[r]).to(device, non_blocking=True)
            _set_states(rng[r], device)
            with gradient_sync(self.wrapped, enabled=micro == self.num_micro - 1):
                with self.autocast:
                    out = self.wrapped(batch)
                (out["loss"] / self.num_micro).backward()
            rng[r] = _get_states(device)
            outputs.append((out, batch))
        metrics = {}
        for name in self.metric_names:  # the mean over the micro-batches that have it
            found = [out[name].detach().float() for out, _ in outputs if name in out]
            if found:
                metrics[name] = torch.stack(found).mean()
        counts = {
            "samples": sum(sum(b.num_samples().values()) for _, b in outputs),
            "tokens": sum(num_tokens(b, self.config) for _, b in outputs),
            "flops": sum(self.flops_of(self.config, b) for _, b in outputs),
        }
        return metrics, counts

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def state_extras(self, step: int) -> dict:
        return {"data_position": {"step": step}}

    def write_model(self, path: Path, state_dict: dict | None) -> None:
        save_checkpoint(self.model, path, metadata={"step": str(self.current_step)}, state_dict=state_dict)

    def read_model(self, path: Path) -> None:
        self.model.load_state_dict(load_checkpoint(path).state_dict(), strict=True)


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
        cuda = torch.Generator(device=device).manual_seed(seed).get_state()
    return torch.Generator().manual_seed(seed).get_state(), cuda


def _set_states(states: tuple, device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def _get_states(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None
