"""The runtime's config system, atomic writes, meter, schedule and Ray CPU policy."""

import os
from pathlib import Path

import pytest
import torch

from beit3_core.runtime.atomic import TMP_PREFIX, atomic_path, copy_atomic, write_text_atomic
from beit3_core.runtime.cluster import local_num_cpus
from beit3_core.runtime.config import fingerprint, merge, parse_set
from beit3_core.runtime.meter import Meter
from beit3_core.runtime.schedule import set_lr
from beit3_core.train.config import build_config, load_config
from evaluation.finetune.config import build_finetune_config


def test_merge_is_recursive_and_leaves_its_inputs_alone():
    base = {"run": {"steps": 10, "seed": 0}, "data": {"shards": "a"}}
    out = merge(base, {"run": {"steps": 5}, "optim": {"lr": 1.0}})
    assert out == {"run": {"steps": 5, "seed": 0}, "data": {"shards": "a"}, "optim": {"lr": 1.0}}
    assert base["run"]["steps"] == 10


def test_set_items_parse_as_yaml_values():
    assert parse_set(["run.steps=50", "optim.betas=[0.9, 0.95]", "run.name=x"]) == {
        "run": {"steps": 50, "name": "x"},
        "optim": {"betas": [0.9, 0.95]},
    }
    with pytest.raises(ValueError, match="SECTION.FIELD=VALUE"):
        parse_set(["steps=3"])


def test_numbers_written_as_yaml_1_1_strings_are_numbers_and_words_are_errors():
    # PyYAML reads `--set optim.lr=3e-4` as the string "3e-4".
    overrides = parse_set(["optim.lr=3e-4", "optim.min_lr=1e-6"])
    assert build_config("tiny_cpu", overrides).optim.lr == 3e-4
    assert build_finetune_config("imagenet", overrides).optim.min_lr == 1e-6
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        build_finetune_config("imagenet", {"optim": {"lr": "fast"}})
    with pytest.raises(ValueError, match="steps must be an integer, got '1e3'"):
        build_config("tiny_cpu", {"run": {"steps": "1e3"}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"run": {"strategy": "zero3"}}, "run.strategy"),
        ({"data": {"open_shards": 0}}, "open_shards"),
        ({"data": {"on_bad_shard": "ignore"}}, "on_bad_shard"),
        ({"run": {"num_workers": 2, "data_ranks": 3}}, "data_ranks"),
        ({"model": {"objective": "clip"}}, "model.objective"),
        ({"run": {"stepz": 3}}, "unknown fields in section 'run'"),
        ({"rn": {"steps": 3}}, "unknown config sections"),
    ],
)
def test_bad_pretraining_values_fail_when_the_config_is_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config("tiny_cpu", overrides)


def test_a_yaml_file_fails_at_load_and_lists_become_tuples(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("recipe: tiny_cpu\noptim: {betas: [0.9, 0.95]}\ndata: {shards: some/dir}\n")
    cfg = load_config(path, {"run": {"steps": 7}})
    assert cfg.optim.betas == (0.9, 0.95) and cfg.run.steps == 7
    assert Path(cfg.data.shards).is_absolute()
    path.write_text("recipe: tiny_cpu\nrun: {strategy: zero3}\n")
    with pytest.raises(ValueError, match="run.strategy"):
        load_config(path)


def test_fingerprint_ignores_where_a_run_goes_but_not_what_it_computes():
    cfg = build_config("tiny_cpu")
    moved = build_config("tiny_cpu", {"run": {"storage_path": "/elsewhere", "name": "n", "max_failures": 9}})
    assert moved.fingerprint() == cfg.fingerprint()
    assert build_config("tiny_cpu", {"run": {"seed": 1}}).fingerprint() != cfg.fingerprint()
    # Two workers running two data ranks each compute what four workers do.
    four = build_config("tiny_cpu", {"run": {"num_workers": 4}})
    two = build_config("tiny_cpu", {"run": {"num_workers": 2, "data_ranks": 4}})
    assert four.fingerprint() == two.fingerprint() != cfg.fingerprint()
    ft = build_finetune_config("imagenet", {"epochs": 1})
    assert build_finetune_config("imagenet", {"epochs": 1, "output_dir": "/x"}).fingerprint() == ft.fingerprint()
    assert build_finetune_config("imagenet", {"epochs": 2}).fingerprint() != ft.fingerprint()
    assert fingerprint({"a": {"b": 1, "c": 2}}, {"a": ["c"]}) == fingerprint({"a": {"b": 1}})


def test_finetune_config_shares_the_run_settings_and_their_checks():
    cfg = build_finetune_config("imagenet", {"run": {"mlflow_parent_run_id": "abc"}})
    assert cfg.run.mlflow_parent_run_id == "abc" and cfg.run.storage_path == "runs/finetune"
    with pytest.raises(ValueError, match="num_workers"):
        build_finetune_config("imagenet", {"run": {"num_workers": 0}})


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "out.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # the temporary file is gone
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX)
        tmp.write_text("new")
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3 << 20))
    copy_atomic(source, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes() and target.read_text() == "new"


def test_meter_averages_the_window_and_zero_fills_declared_names():
    meter = Meter(torch.device("cpu"), ["loss", "loss/text"])
    meter.update({"loss": torch.tensor(1.0), "loss/text": torch.tensor(4.0)}, samples=8)
    meter.update({"loss": torch.tensor(3.0)}, samples=8)  # no text stream this step: counts as 0
    report = meter.report()
    assert report["loss"] == 2.0 and report["loss/text"] == 2.0 and report["samples_per_s"] > 0
    meter.update({"loss": torch.tensor(5.0)})
    assert meter.report()["loss"] == 5.0  # a report starts a new window


def test_set_lr_scales_each_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [a], "lr_scale": 0.5}, {"params": [b]}], lr=1.0)
    set_lr(optimizer, 0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.2]


def test_local_ray_gets_the_cores_plus_one_and_at_least_what_training_needs(monkeypatch):
    monkeypatch.delenv("BEIT3_RAY_NUM_CPUS", raising=False)
    cores = os.cpu_count() or 1
    assert local_num_cpus() == cores + 1
    assert local_num_cpus(cores + 4.5) == cores + 5
    monkeypatch.setenv("BEIT3_RAY_NUM_CPUS", "7")
    assert local_num_cpus(3) == 7
