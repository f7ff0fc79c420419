"""The runtime's loop with a training kind written here: a kind is one small class; the loop checkpoints in the
one folder format, logs windows, follows the schedule and resumes from a checkpoint exactly."""

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from beit3_core.runtime.checkpoint import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, load_state
from beit3_core.runtime.config import RunSettings
from beit3_core.runtime.loop import Schedule, TrainingKind, WorkerContext, train

STEPS, EVERY = 12, 4


@dataclass(kw_only=True)
class ToyRun(RunSettings):
    log_every: int = 2
    num_workers: int = 1


class LinearRegression(TrainingKind):
    """y = sum(x) from seeded batches: batch s is a function of s alone, so a resumed run sees the same data."""

    def __init__(self, ctx: WorkerContext):
        self.ctx, self.run = ctx, ToyRun()
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1, weight_decay=0.0)
        self.schedule = Schedule(STEPS, warmup_steps=2, lr=0.1, min_lr=0.01)
        self.checkpoint_every, self.grad_clip = EVERY, 10.0

    def start(self, start_step: int) -> None:
        self.started_at = start_step

    def step(self, step: int):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        loss = ((self.model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        loss.backward()
        return {"loss": loss.detach()}, {"samples": 16}

    def config_dict(self) -> dict:
        return {"kind": "linear"}

    def write_model(self, path: Path, state_dict) -> None:
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path))

    def read_model(self, path: Path) -> None:
        self.model.load_state_dict(load_file(str(path)))


def _run(tmp_path: Path, start_from: Path | None = None):
    ctx = WorkerContext(rank=0, world_size=1, device=torch.device("cpu"), loop_config={})
    kind = LinearRegression(ctx)
    start = load_state(start_from, kind.read_model, kind.optimizer)["step"] if start_from else 0
    kind.start(start)
    saved, logs = {}, []

    def report(metrics: dict, folder: Path | None) -> None:
        saved[metrics["step"]] = shutil.copytree(folder, tmp_path / f"step{metrics['step']}")

    train(kind, ctx, start, report=report, on_log=logs.append)
    return kind, saved, logs


def test_checkpoints_logs_and_schedule(tmp_path):
    kind, saved, logs = _run(tmp_path / "a")
    assert sorted(saved) == [4, 8, 12]
    folder = saved[8]
    assert {p.name for p in folder.iterdir()} == {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE}
    assert json.loads((folder / STATE_FILE).read_text()) == {"step": 8, "config": {"kind": "linear"}}
    assert [log["step"] for log in logs] == [2, 4, 6, 8, 10, 12]
    # Step s (1-based) is at s - 1 steps done: warmup reaches 0.1 at step 2; the last step is 9/10 of the way
    # down the cosine from 0.1 to 0.01.
    assert logs[0]["lr"] == 0.1
    assert abs(logs[-1]["lr"] - (0.01 + 0.045 * (1 + math.cos(0.9 * math.pi)))) < 1e-12
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"] and logs[0]["samples_per_s"] > 0 and "grad_norm" in logs[0]


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    full, saved, _ = _run(tmp_path / "full")
    resumed, _, logs = _run(tmp_path / "resumed", start_from=saved[8])
    assert resumed.started_at == 8 and [log["step"] for log in logs] == [10, 12]
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh = LinearRegression(WorkerContext(0, 1, torch.device("cpu"), {}))
    assert not torch.equal(fresh.model.weight, full.model.weight)  # training moved the weights
