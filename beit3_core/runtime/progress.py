"""Live progress of long work: step / total, loss, samples/s and ETA on the driver, failures and recoveries told.

Two halves:
- Inside Ray Train, rank 0 pushes an event to a `ProgressBoard` actor on its log steps (`WorkerProgress`; one
  fire-and-forget call, no extra host sync: the metrics are the ones the loop already reduced for MLflow). The
  Train controller pushes worker failures and registered checkpoints (`ProgressCallback`).
- On the driver, `run_with_progress` drains the board from a thread and renders it with `ProgressDisplay`:
  a rich progress bar in a terminal, otherwise a plain line on every event at most every 10 s and at least
  every 30 s while the run is silent.

`ProgressDisplay` is also used directly by driver-side loops (evaluation over a split).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from ray.train import UserCallback

PLAIN_EVERY_S = 10.0
"""A plain line per event at most this often (failures and restarts are always printed)."""
SILENT_EVERY_S = 30.0
"""A plain line at least this often while nothing arrives."""
POLL_S = 0.5


class ProgressBoard:
    """Ray actor (created by `progress_hooks`): a queue of events from workers and the Train controller."""

    def __init__(self):
        self.events: list[dict] = []

    def push(self, event: dict) -> None:
        self.events.append(event | {"time": time.time()})

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class ProgressCallback(UserCallback):
    """Runs in the Ray Train controller: tells the board which ranks failed and which checkpoints registered."""

    def __init__(self, board):
        self.board = board

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is not None and metrics:
            self.board.push.remote({"type": "checkpoint", "step": metrics[0].get("step")})

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        errors = {int(rank): _first_line(error) for rank, error in worker_exceptions.items()}
        self.board.push.remote({"type": "failure", "errors": errors})


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


class WorkerProgress:
    """Worker side: rank 0 tells the board where the run starts and, on log steps, where it is."""

    def __init__(self, loop_config: dict, rank: int, total: int, start: int, samples_per_step: int = 0):
        self.board = loop_config.get("progress") if rank == 0 else None
        self.samples_per_step = samples_per_step
        self.last = (time.perf_counter(), start)
        if self.board is not None:
            self.board.push.remote({"type": "start", "step": start, "total": total})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.board is None:
            return
        now = time.perf_counter()
        then, before = self.last
        # The loop's own throughput (all ranks) where it measures one; else global samples per step over time.
        rate = metrics.get("samples_per_s") or (step - before) * self.samples_per_step / max(now - then, 1e-9)
        self.last = (now, step)
        loss = metrics.get("loss")
        self.board.push.remote({"type": "step", "step": step, "loss": loss, "samples_per_s": rate})


class ProgressDisplay:
    """One line of progress on stderr (stdout stays for results): a rich bar in a terminal, plain lines
    otherwise (`BEIT3_PROGRESS=plain|rich`)."""

    _lock = threading.Lock()
    _live = None  # one shared rich Progress for every display open at once (concurrent pipeline steps)
    _users = 0

    def __init__(self, label: str, total: int | None = None, stream=None):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        mode = os.environ.get("BEIT3_PROGRESS", "rich" if self.stream.isatty() else "plain")
        self.rich = mode == "rich"
        self.step, self.start_step, self.loss, self.rate = 0, 0, None, None
        self.started = time.monotonic()
        self.last_line = 0.0
        self.task = None

    def __enter__(self) -> ProgressDisplay:
        if self.rich:
            with ProgressDisplay._lock:
                if ProgressDisplay._live is None:
                    from rich.console import Console
                    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                    ProgressDisplay._live = Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(),
                        console=Console(stderr=True),
                    )
                    ProgressDisplay._live.start()
                ProgressDisplay._users += 1
                self.task = ProgressDisplay._live.add_task(self.label, total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        if not self.rich:
            return
        with ProgressDisplay._lock:
            ProgressDisplay._users -= 1
            if ProgressDisplay._users == 0:
                ProgressDisplay._live.stop()
                ProgressDisplay._live = None

    def restart_from(self, step: int, total: int | None) -> None:
        """A (re)started run: the rate and ETA count from here."""
        self.step = self.start_step = step
        self.total = total or self.total
        self.loss = self.rate = None
        self.started = time.monotonic()
        self.update(step, force=True)

    def update(self, step: int, loss: float | None = None, rate: float | None = None, force: bool = False) -> None:
        self.step, self.loss = step, loss if loss is not None else self.loss
        self.rate = rate if rate is not None else self.rate
        if self.rich:
            ProgressDisplay._live.update(self.task, completed=step, total=self.total, info=self._info())
            return
        now = time.monotonic()
        if force or step == self.total or now - self.last_line >= PLAIN_EVERY_S:
            self._line(f"{self.label}: step {step}/{self.total or '?'} {self._info()} eta {self._eta()}")

    def heartbeat(self) -> None:
        """Plain mode: a line while nothing arrives, so a silent run still shows it is alive."""
        if not self.rich and time.monotonic() - self.last_line >= SILENT_EVERY_S:
            where = f"at step {self.step}/{self.total}" if self.total else "(starting the workers)"
            self._line(f"{self.label}: still running {where}")

    def note(self, message: str) -> None:
        """Failures and recoveries: always printed, above the bar in a terminal."""
        if self.rich:
            ProgressDisplay._live.console.print(f"{self.label}: {message}")
        else:
            self._line(f"{self.label}: {message}")

    def _info(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.rate is not None:
            parts.append(f"{self.rate:.1f} samples/s")
        return " ".join(parts)

    def _eta(self) -> str:
        done = self.step - self.start_step
        if not self.total or done <= 0:
            return "?"
        seconds = (time.monotonic() - self.started) / done * (self.total - self.step)
        return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        print(text, file=self.stream, flush=True)


class _BoardReader:
    """Driver thread: drains the board and renders it until stopped."""

    def __init__(self, board, display: ProgressDisplay, max_failures: int):
        self.board, self.display, self.max_failures = board, display, max_failures
        self.failures, self.checkpoint_step = 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="beit3-progress", daemon=True)

    def _run(self) -> None:
        import ray

        while not self.stop.is_set():
            self._render(ray.get(self.board.drain.remote()))
            self.display.heartbeat()
            self.stop.wait(POLL_S)
        self._render(ray.get(self.board.drain.remote()))

    def _render(self, events: list[dict]) -> None:
        for event in events:
            kind = event["type"]
            if kind == "start":
                if event["step"] > 0:
                    self.display.note(f"rank 0 resumed from the checkpoint of step {event['step']}")
                self.display.restart_from(event["step"], event["total"])
            elif kind == "step":
                self.display.update(event["step"], event.get("loss"), event.get("samples_per_s"))
            elif kind == "checkpoint":
                self.checkpoint_step = event["step"]
            elif kind == "failure":
                self.failures += 1
                ranks = ", ".join(f"rank {r} ({msg})" for r, msg in sorted(event["errors"].items()))
                left = max(0, self.max_failures - self.failures) if self.max_failures >= 0 else "unlimited"
                where = f"step {self.checkpoint_step}" if self.checkpoint_step else "the start (no checkpoint yet)"
                self.display.note(
                    f"worker failure: {ranks}; restarting from {where}, restarts left after this one: {left}"
                )


def progress_hooks() -> tuple[Any, ProgressCallback]:
    """(board actor handle, controller callback) for one training run; Ray must be initialised."""
    import ray

    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    return board, ProgressCallback(board)


def run_with_progress(fit, board, label: str, max_failures: int) -> Any:
    """Call `fit()` (a Ray Train fit) while a thread renders the board's events; returns what `fit` returns."""
    import ray

    with ProgressDisplay(label) as display:
        reader = _BoardReader(board, display, max_failures)
        reader.thread.start()
        try:
            return fit()
        finally:
            reader.stop.set()
            reader.thread.join(timeout=10)
            ray.kill(board)


class StageProgress:
    """The `add_task` / `advance` face of `rich.progress.Progress` over `ProgressDisplay`s: one display per stage
    (a stage ends when the next one starts), for libraries that report stages of counted work."""

    def __init__(self, label: str):
        self.label = label
        self.display: ProgressDisplay | None = None
        self.done, self.started = 0, 0.0

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def add_task(self, description: str, total: int) -> int:
        self._close()
        self.display = ProgressDisplay(f"{self.label} {description}", total).__enter__()
        self.done, self.started = 0, time.monotonic()
        self.display.restart_from(0, total)
        return 0

    def advance(self, task: int, amount: int = 1) -> None:
        self.done += amount
        self.display.update(self.done, rate=self.done / max(time.monotonic() - self.started, 1e-9))

    def _close(self) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)
            self.display = None
