"""Calling the steps: which run (`--only`, `--from`), which ignore their cache (`--force`), what each ended as.

Steps are named `ingest[<source>]`, `preprocess`, `pretrain`, `itc`, `zeroshot[<unit>]`, `finetune[<task>]`,
`finetune-scratch[<task>]` (with `compare_scratch`) and `report`. On the command line a step is named by its kind
(`finetune`: every benchmark) or one instance (`finetune:vqav2`).

The ledger `<run_dir>/.state/steps.json` keeps, per step, its last state, cache key and (small) output. A step
that is not selected is not called at all; its last output from the ledger feeds the steps after it, if the files
it names still exist. A failing step stops the flow with `StepFailed`, which names the step and carries the tail
of its log. Whether a selected step is a cache hit is decided from its cached result alone (`flows.steps.cache`),
never from the ledger, which goes with the run directory.
"""

import json
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Task

from beit3_core.runtime.atomic import write_text_atomic
from flows.settings import state_dir
from flows.steps.cache import checked_key, missing_files
from flows.steps.config import Execution

STEPS = ("ingest", "preprocess", "pretrain", "itc", "zeroshot", "finetune", "finetune-scratch", "report")
LEDGER_FILE = "steps.json"


class StepFailed(RuntimeError):
    """A step ended Failed/Crashed; the message names it and holds its log tail."""

    def __init__(self, label: str, message: str, log_tail: list[str], log_file: Path | None):
        self.label, self.log_tail, self.log_file = label, log_tail, log_file
        where = f"\nfull log: {log_file}" if log_file else ""
        tail = "\n".join(log_tail[-40:])
        super().__init__(f"step {label} failed: {message}\n--- log of {label} ---\n{tail}{where}")


class MissingStepOutput(RuntimeError):
    """A step was skipped by --only/--from but has never completed, so its output is unknown."""


def step_of(label: str) -> str:
    return label.split("[", 1)[0]


def normalize(token: str) -> str:
    """`finetune:vqav2` -> `finetune[vqav2]`."""
    kind, sep, name = token.partition(":")
    return f"{kind}[{name}]" if sep else token


@dataclass(frozen=True)
class Selection:
    only: tuple[str, ...] = ()
    from_step: str | None = None
    force: tuple[str, ...] = ()

    @classmethod
    def parse(cls, only: list[str] | None, from_step: str | None, force: list[str] | None) -> "Selection":
        if only and from_step:
            raise ValueError("--only and --from exclude each other")
        return cls(
            tuple(normalize(t) for t in only or ()),
            normalize(from_step) if from_step else None,
            tuple(normalize(t) for t in force or ()),
        )

    def check(self, labels: list[str]) -> None:
        """Every named step must exist in this pipeline (a typo must not silently run nothing)."""
        for token in (*self.only, *self.force, *([self.from_step] if self.from_step else [])):
            if token == "all":
                continue
            if step_of(token) not in STEPS or ("[" in token and token not in labels):
                raise ValueError(f"unknown step {token!r}; steps: {', '.join(STEPS)} or one of {', '.join(labels)}")

    def runs(self, label: str) -> bool:
        if self.only:
            return any(_matches(t, label) for t in self.only)
        if self.from_step:
            order = STEPS.index
            start = self.from_step
            return order(step_of(label)) > order(step_of(start)) or _matches(start, label)
        return True

    def forced(self, label: str) -> bool:
        return any(t == "all" or _matches(t, label) for t in self.force)


def _matches(token: str, label: str) -> bool:
    return token == label or token == step_of(label) and "[" not in token


class Ledger:
    def __init__(self, run_dir: Path):
        self.path = state_dir(run_dir) / LEDGER_FILE

    def read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text())["steps"] if self.path.is_file() else {}

    def record(self, label: str, entry: dict) -> None:
        steps = self.read()
        steps[label] = (steps.get(label, {}) if entry["state"] == "Failed" else {}) | entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"steps": steps}, indent=2, sort_keys=True, default=str))

    def last_completed(self, label: str, why: str = "") -> dict:
        """Step `label`'s ledger entry (`output`, `key`, ...) when its last run completed and every file its output
        names is still on disk; otherwise MissingStepOutput saying which (`why`, e.g. "was not selected", is said of
        the step first)."""
        last = self.read().get(label)
        lead = f"step {label} {why} and" if why else f"step {label}"
        if not last or "output" not in last:
            raise MissingStepOutput(f"{lead} has never completed: run it first")
        if last["state"] == "Failed":
            raise MissingStepOutput(f"{lead} failed in its last run: run it first")
        if missing := missing_files(last["output"]):
            owner = f"{lead} its" if why else f"step {label}'s"
            raise MissingStepOutput(f"{owner} output {missing[0]} is gone: run it first")
        return last


class StepLogs(logging.Handler):
    """Every log record of this flow run, to a file and per step (by Prefect's task run name = step label)."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.stream = open(path, "a")  # noqa: SIM115 - closed in close()
        self.lines: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=400))
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        label = getattr(record, "task_run_name", None) or _current_task_run_name() or "flow"
        line = f"[{label}] {self.format(record)}"
        self.lines[label].extend(line.splitlines())
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        super().close()


def _current_task_run_name() -> str | None:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ctx.task_run.name if ctx and ctx.task_run else None


@dataclass
class StepRunner:
    run_dir: Path
    labels: list[str]
    """Every step of this pipeline, in order."""
    selection: Selection
    execution: Execution
    storage: str | Path
    """Result storage of every step (`flows.steps.cache.result_storage`)."""
    flow_run_id: str = ""
    states: dict[str, dict] = field(default_factory=dict)
    """This run's steps: label -> {state, key, mlflow_run_id}."""

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.run_dir)
        log_file = state_dir(self.run_dir) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.flow_run_id[:8]}.log"
        self.logs = StepLogs(log_file)
        logging.getLogger().addHandler(self.logs)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.logs)
        self.logs.close()

    def run(self, label: str, step: Task, **params: Any) -> Any:
        """Run one step and return its output: its last output when it is not selected but a later step is,
        None when neither it nor any later step is selected."""
        if not self.selection.runs(label):
            return self._last_output(label) if self._feeds_selected(label) else None
        return self._collect(label, self._submit(label, step, params))

    def map(self, kind: str, step: Task, params_by_name: dict[str, dict], limit: int = 0) -> dict[str, Any]:
        """Run one step per name concurrently (Prefect's thread pool); outputs by name (as `run`).

        `limit` > 0: at most that many in flight, started in the order of `params_by_name`.
        """
        # The earlier outputs of the names not selected are read first: one that is missing stops the run before
        # any step of the map starts, rather than while the others run on and the run's Ray is shut down under them.
        kept = {
            name: self._last_output(f"{kind}[{name}]")
            for name in params_by_name
            if not self.selection.runs(f"{kind}[{name}]") and self._feeds_selected(f"{kind}[{name}]")
        }
        slots = threading.BoundedSemaphore(limit) if limit else None
        futures = {}
        for name, params in params_by_name.items():
            if self.selection.runs(f"{kind}[{name}]"):
                if slots:
                    slots.acquire()  # released when a step in flight ends, whatever its state
                futures[name] = self._submit(f"{kind}[{name}]", step, params)
                if slots:
                    futures[name].add_done_callback(lambda _future: slots.release())
        outputs, failures = {}, []
        for name in params_by_name:
            try:
                if name in futures:
                    outputs[name] = self._collect(f"{kind}[{name}]", futures[name])
                elif name in kept:
                    outputs[name] = kept[name]
            except StepFailed as failure:
                failures.append(failure)
        if failures:
            raise failures[0]
        return outputs

    def _feeds_selected(self, label: str) -> bool:
        later = [other for other in self.labels if STEPS.index(step_of(other)) > STEPS.index(step_of(label))]
        return any(self.selection.runs(other) for other in later)

    def _submit(self, label: str, step: Task, params: dict):
        options: dict[str, Any] = {
            "task_run_name": label,
            "refresh_cache": self.selection.forced(label),
            "result_storage": self.storage,
            "cache_key_fn": checked_key(step.cache_key_fn),
        }
        if step.retries:
            options |= {"retries": self.execution.io_retries, "retry_delay_seconds": self.execution.retry_delay_seconds}
        return step.with_options(**options).submit(**params)

    def _collect(self, label: str, future) -> Any:
        future.wait()
        state = future.state
        entry = {"state": state.name, "flow_run_id": self.flow_run_id}
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if not state.is_completed():
            self.states[label] = entry
            self.ledger.record(label, entry | {"message": state.message})
            raise StepFailed(label, state.message or state.name, list(self.logs.lines.get(label, [])), self.logs.path)
        output = state.result()
        entry |= {"key": output.get("key"), "mlflow_run_id": output.get("mlflow_run_id")}
        self.states[label] = entry
        self.ledger.record(label, entry | {"output": output, "message": state.message})
        return output

    def _last_output(self, label: str) -> Any:
        last = self.ledger.last_completed(label, "was not selected")
        self.states[label] = {"state": "Skipped", "key": last.get("key")}
        return last["output"]
