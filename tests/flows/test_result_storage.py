"""Where cached step results live and when a cached step is run again, on a real Prefect server (the test harness),
with the pipeline's own `StepRunner` and two quick stand-in steps (one writes a file, the next reads it).

The deployment case (a Prefect worker running the real pipeline) is in test_deploy.py.
"""

import json
import time
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.runtime import flow_run

from flows.settings import Settings
from flows.steps.cache import result_storage
from flows.steps.config import Execution
from flows.steps.keys import step_key
from flows.steps.runner import Ledger, MissingStepOutput, Selection, StepRunner

CALLS: list[str] = []


def _write_key(_ctx, params: dict) -> str:
    return step_key("preprocess", params["path"], params["text"])


@task(cache_key_fn=_write_key)
def write_file(path: str, text: str) -> dict:
    """Stand-in for a step with an output file (the shards, a checkpoint, results.json)."""
    CALLS.append("preprocess")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return {"files": [path], "key": _write_key(None, {"path": path, "text": text})}


def _read_key(_ctx, params: dict) -> str:
    return step_key("report", params["upstream"]["key"])


@task(cache_key_fn=_read_key)
def read_file(upstream: dict) -> dict:
    """Stand-in for the step after it: reads the file the first step wrote (a cache hit upstream must hand on a
    file that exists)."""
    CALLS.append("report")
    return {"text": Path(upstream["files"][0]).read_text(), "key": _read_key(None, {"upstream": upstream})}


@flow
def two_steps(run_dir: str, only: list[str] | None = None) -> dict:
    storage = result_storage(Settings(), Path(run_dir))
    selection = Selection.parse(only, None, None)
    runner = StepRunner(Path(run_dir), ["preprocess", "report"], selection, Execution(), storage, str(flow_run.id))
    try:
        written = runner.run("preprocess", write_file, path=str(Path(run_dir) / "out" / "a.txt"), text="hello")
        read = runner.run("report", read_file, upstream=written)
    finally:
        runner.close()
    return {"flow_run_id": str(flow_run.id), "read": read, "states": runner.states}


@pytest.fixture
def run(prefect_server, prefect_states):
    """Run the two-step flow; its output, each step's final state on the server, and the step bodies called."""

    def run(run_dir: Path, **selection) -> tuple[dict, dict[str, str], list[str]]:
        CALLS.clear()
        out = two_steps(str(run_dir), **selection)
        return out, prefect_states(out["flow_run_id"]), list(CALLS)

    return run


def _records(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def no_storage_variable(monkeypatch):
    monkeypatch.delenv("BEIT3_RESULT_STORAGE", raising=False)


def test_results_are_kept_in_the_run_dir_and_a_step_whose_file_is_gone_runs_again(run, tmp_path, no_storage_variable):
    from prefect.settings import get_current_settings

    run_dir = tmp_path / "run"
    out, states, calls = run(run_dir)
    assert states == {"preprocess": "Completed", "report": "Completed"} and calls == ["preprocess", "report"]
    keys = {step["key"] for step in out["states"].values()}
    assert _records(run_dir / ".state" / "prefect" / "results") == keys
    assert not keys & _records(Path(get_current_settings().results.local_storage_path))  # not in PREFECT_HOME

    out, states, calls = run(run_dir)
    assert states == {"preprocess": "Cached", "report": "Cached"} and calls == []

    # The output file and the ledger are gone, the cached results are not: only the check of the cached result
    # itself can tell, and the step that wrote the file runs again; the step after it is a cache hit again.
    (run_dir / "out" / "a.txt").unlink()
    (run_dir / ".state" / "steps.json").unlink()
    out, states, calls = run(run_dir)
    assert states == {"preprocess": "Completed", "report": "Cached"} and calls == ["preprocess"]
    assert (run_dir / "out" / "a.txt").read_text() == "hello" == out["read"]["text"]

    out, states, calls = run(run_dir)
    assert states == {"preprocess": "Cached", "report": "Cached"} and calls == []


def test_results_kept_outside_the_run_dir_do_not_outlive_its_files(run, tmp_path, monkeypatch):
    import shutil

    storage = tmp_path / "shared-results"
    monkeypatch.setenv("BEIT3_RESULT_STORAGE", str(storage))
    run_dir = tmp_path / "run"
    out, states, _ = run(run_dir)
    assert set(states.values()) == {"Completed"}
    assert _records(storage) == {step["key"] for step in out["states"].values()}
    assert not (run_dir / ".state" / "prefect" / "results").exists()

    shutil.rmtree(run_dir)  # the run directory with its ledger, as when a scheduled run starts on a clean disk
    out, states, calls = run(run_dir)
    assert states == {"preprocess": "Completed", "report": "Cached"} and calls == ["preprocess"]
    assert json.loads((run_dir / ".state" / "steps.json").read_text())["steps"]["preprocess"]["state"] == "Completed"
    for step in out["states"].values():
        assert step["state"] in ("Completed", "Cached")
    assert (run_dir / "out" / "a.txt").read_text() == "hello"


def test_a_saved_block_slug_is_used_and_a_wrong_one_fails_before_any_step(run, tmp_path, monkeypatch):
    from prefect.filesystems import LocalFileSystem

    LocalFileSystem(basepath=str(tmp_path / "block-results")).save("beit3-test-results", overwrite=True)
    monkeypatch.setenv("BEIT3_RESULT_STORAGE", "local-file-system/beit3-test-results")
    out, states, _ = run(tmp_path / "run")
    assert set(states.values()) == {"Completed"}
    assert _records(tmp_path / "block-results") == {step["key"] for step in out["states"].values()}

    monkeypatch.setenv("BEIT3_RESULT_STORAGE", "local-file-system/no-such-block")
    CALLS.clear()
    with pytest.raises(ValueError, match="BEIT3_RESULT_STORAGE='local-file-system/no-such-block'"):
        two_steps(str(tmp_path / "run2"))
    assert CALLS == []


def test_a_skipped_step_whose_file_is_gone_is_an_error(run, tmp_path, no_storage_variable):
    run_dir = tmp_path / "run"
    run(run_dir)
    (run_dir / "out" / "a.txt").unlink()
    with pytest.raises(MissingStepOutput, match=r"step preprocess was not selected and its output .*a\.txt is gone"):
        run(run_dir, only=["report"])
    # The scripts that read a run directory's checkpoints (benchmarks/) ask the same ledger, without a `why`.
    ledger = Ledger(run_dir)
    with pytest.raises(MissingStepOutput, match=r"step preprocess's output .*a\.txt is gone"):
        ledger.last_completed("preprocess")
    with pytest.raises(MissingStepOutput, match=r"step itc has never completed"):
        ledger.last_completed("itc")
    assert ledger.last_completed("report")["output"] == ledger.read()["report"]["output"]


@flow
def mapped_steps(run_dir: str, only: list[str] | None = None) -> dict:
    storage = result_storage(Settings(), Path(run_dir))
    labels = ["finetune[a]", "finetune[b]", "report"]
    runner = StepRunner(
        Path(run_dir), labels, Selection.parse(only, None, None), Execution(), storage, str(flow_run.id)
    )
    try:
        calls = {name: {"path": str(Path(run_dir) / "out" / f"{name}.txt"), "text": name} for name in ("a", "b")}
        written = runner.map("finetune", write_file, calls)
        return runner.run("report", read_file, upstream=written["a"])
    finally:
        runner.close()


def test_a_mapped_step_that_never_ran_stops_the_run_before_its_siblings_start(
    prefect_server, tmp_path, no_storage_variable
):
    CALLS.clear()
    with pytest.raises(MissingStepOutput, match=r"step finetune\[b\] was not selected and has never completed"):
        mapped_steps(str(tmp_path / "run"), only=["finetune[a]", "report"])
    assert CALLS == []  # finetune[a] never started
    assert mapped_steps(str(tmp_path / "run"))["text"] == "a" and CALLS == ["preprocess", "preprocess", "report"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "RUN/.state/prefect/results"),
        ("/shared/results", "/shared/results"),
        ("local-file-system/beit3", "local-file-system/beit3"),
        ("s3-bucket/beit3-results", "s3-bucket/beit3-results"),
    ],
)
def test_the_storage_variable_names_a_folder_or_a_block(value, expected, tmp_path):
    got = Settings(result_storage=value).results_storage(tmp_path)
    assert str(got).replace(str(tmp_path.resolve()), "RUN") == expected
    assert isinstance(got, Path) == (not value or value.startswith("/"))


@pytest.mark.parametrize("value", ["results", "a/b/c", "type/"])
def test_a_storage_variable_that_is_neither_is_refused(value, tmp_path):
    with pytest.raises(ValueError, match="expected a folder .* or a saved Prefect block slug"):
        Settings(result_storage=value).results_storage(tmp_path)


SPANS: dict[str, tuple[float, float]] = {}


def _timed_key(_ctx, params: dict) -> str:
    return step_key("finetune", params["name"], params["seconds"])


@task(cache_key_fn=_timed_key)
def timed_step(name: str, seconds: float) -> dict:
    """Stand-in for a fine-tune: records when it ran."""
    start = time.monotonic()
    time.sleep(seconds)
    SPANS[name] = (start, time.monotonic())
    return {"key": name}


@flow
def limited_map(run_dir: str, limit: int) -> dict:
    storage = result_storage(Settings(), Path(run_dir))
    names = ["long", "mid", "short1", "short2"]
    runner = StepRunner(
        Path(run_dir),
        [f"finetune[{n}]" for n in names],
        Selection.parse(None, None, None),
        Execution(),
        storage,
        str(flow_run.id),
    )
    try:
        seconds = {"long": 3.0, "mid": 1.0, "short1": 0.3, "short2": 0.3}
        return runner.map("finetune", timed_step, {n: {"name": n, "seconds": seconds[n]} for n in names}, limit)
    finally:
        runner.close()


def test_a_limited_map_starts_its_steps_in_order_with_at_most_limit_in_flight(
    prefect_server, tmp_path, no_storage_variable
):
    SPANS.clear()
    out = limited_map(str(tmp_path / "run"), 2)
    assert set(out) == {"long", "mid", "short1", "short2"}
    starts = sorted(SPANS, key=lambda n: SPANS[n][0])
    # The first two are in flight together (which body starts first is up to the threads); the rest in order.
    assert set(starts[:2]) == {"long", "mid"} and starts[2:] == ["short1", "short2"]
    # Never three at once: at each start, count the steps that started earlier and had not ended yet.
    for name, (start, _) in SPANS.items():
        running = [n for n, (s, e) in SPANS.items() if n != name and s <= start < e]
        assert len(running) <= 1, (name, running)
    # The short ones wait for a slot: the first of them starts after "mid" (1.0 s) ends, before "long" (3 s).
    assert SPANS["mid"][1] <= SPANS["short1"][0] < SPANS["long"][1]
