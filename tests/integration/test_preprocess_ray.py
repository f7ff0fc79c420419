"""The preprocessing pipeline on a real local Ray, on a small raw dataset with every kind of bad input."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from support.raw_data import build_raw_dataset, image_bytes, tiny_preprocess_config

from beit3_core.data.shard_format import iter_webdataset_shard, read_parquet_shard
from beit3_core.data.views import to_tokenizer_input
from preprocessing.config import load_preprocess_config
from preprocessing.pipeline import run_preprocessing
from preprocessing.plan import plan_source
from preprocessing.sources import READERS
from preprocessing.tokenize_shard import replay_view
from preprocessing.vqkd.checkpoint import load_vqkd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 << 20)
    yield
    ray.shutdown()


def _tree_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    raw = build_raw_dataset(root / "raw")
    config = tiny_preprocess_config(root, root / "out", raw["sources"])
    report = run_preprocessing(load_preprocess_config(config))
    return root, raw, config, report


def _planned_shards(config: Path) -> list[str]:
    cfg = load_preprocess_config(config)
    return [plan.name for spec in cfg.sources for plan in plan_source(spec, cfg.shards.files_per_shard)]


def test_raw_dataset_covers_every_source_format(first_run):
    _, raw, config, report = first_run
    assert sorted(s["format"] for s in raw["sources"]) == sorted(READERS)
    assert {name: src["format"] for name, src in report.manifest["sources"].items()} == {
        s["name"]: s["format"] for s in raw["sources"]
    }
    assert [s["name"] for s in report.manifest["shards"]] == _planned_shards(config)


def test_every_record_is_accounted_for_and_every_bad_input_quarantined(first_run):
    root, raw, _, report = first_run
    manifest = report.manifest
    assert set(manifest["sources"]) == set(raw["expected_reasons"])
    for name, src in manifest["sources"].items():
        assert src["records_in"] == src["records_out"] + src["records_quarantined"], name
        assert src["records_quarantined"] == len(raw["expected_reasons"][name]), name
    quarantine = pq.read_table(root / "out" / "quarantine.parquet").to_pylist()
    found = {(q["source"], q["reason"]) for q in quarantine}
    expected = {(s, r) for s, reasons in raw["expected_reasons"].items() for r in reasons}
    assert found == expected
    assert report.reasons == {f"{s}:{r}": 1 for s, r in expected}  # one planted record per reason
    dup = next(q for q in quarantine if q["source"] == "pairs" and q["reason"] == "duplicate")
    assert dup["key"].endswith("bad_dup") and dup["detail"].startswith("duplicate_of=pairs/")
    total = sum(s["counts"][k] for s in manifest["shards"] for k in ("image", "text", "pair"))
    assert total == sum(src["records_out"] for src in manifest["sources"].values())


def test_shards_hold_text_ids_and_tokens_of_the_replayed_views(first_run):
    root, _, _, report = first_run
    manifest = report.manifest
    tokenizer = load_vqkd(manifest["visual_tokenizer"]["path"])
    img_size = manifest["visual_tokenizer"]["img_size"]
    mask_id = manifest["text_tokenizer"]["mask_id"]
    checked = 0
    for shard in manifest["shards"]:
        table = read_parquet_shard(root / "out" / shard["parquet"])
        assert table.num_rows == shard["num_records"]
        for sample in iter_webdataset_shard(root / "out" / shard["tar"]):
            meta = sample["meta"]
            if meta["text_ids"] is not None:
                ids = meta["text_ids"]
                assert ids[0] == 0 and ids[-1] == 2 and all(3 <= i < mask_id for i in ids[1:-1])
            for view in meta["views"] or []:
                pixels = replay_view(sample["image_bytes"], view, img_size)
                with torch.no_grad():
                    tokens = tokenizer.encode(to_tokenizer_input(pixels)).flatten().tolist()
                assert tokens == view["tokens"]
                checked += 1
    assert checked >= 2 * 30


def test_rerun_reuses_every_shard(first_run):
    root, _, config, _ = first_run
    before = _tree_hashes(root / "out")
    report = run_preprocessing(load_preprocess_config(config))
    assert report.shards_built == [] and report.shards_reused == _planned_shards(config)
    assert _tree_hashes(root / "out") == before


def test_changing_one_input_file_rebuilds_only_its_shard(ray_local, tmp_path):
    raw = build_raw_dataset(tmp_path / "raw")
    config = tiny_preprocess_config(tmp_path, tmp_path / "out", raw["sources"])
    run_preprocessing(load_preprocess_config(config))
    before = _tree_hashes(tmp_path / "out")
    shards = _planned_shards(config)
    assert len(before) == len(shards) > 1
    (tmp_path / "raw" / "images" / "img004.jpg").write_bytes(image_bytes(999, fmt="JPEG"))
    report = run_preprocessing(load_preprocess_config(config))
    assert len(report.shards_built) == 1 and report.shards_built[0].startswith("images-")
    assert sorted(report.shards_reused + report.shards_built) == sorted(shards)
    after = _tree_hashes(tmp_path / "out")
    assert set(after) == set(before)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {f"{report.shards_built[0]}.tar"}


def test_killed_run_resumes_without_duplicates_or_gaps(first_run, tmp_path):
    root, raw, _, report = first_run
    config = tiny_preprocess_config(tmp_path, tmp_path / "out", raw["sources"])
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "flows.cli", "preprocess", str(config), "--no-progress"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("*.done.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "manifest.json").exists()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Same records as the uninterrupted run: every shard byte-identical, every key once.
    assert _tree_hashes(tmp_path / "out") == _tree_hashes(root / "out")
    keys = [s["key"] for tar in sorted((tmp_path / "out").glob("*.tar")) for s in iter_webdataset_shard(tar)]
    assert len(keys) == len(set(keys)) == sum(s["records_out"] for s in report.manifest["sources"].values())
    assert not list((tmp_path / "out").glob("_tmp.*"))


def test_tokens_are_integers_in_the_codebook(first_run):
    root, _, _, report = first_run
    num_codes = report.manifest["visual_tokenizer"]["num_codes"]
    table = read_parquet_shard(root / "out" / report.manifest["shards"][0]["parquet"])
    tokens = [t for views in table.column("views").to_pylist() if views for v in views for t in v["tokens"]]
    assert tokens and 0 <= min(tokens) and max(tokens) < num_codes
    assert np.asarray(tokens).dtype.kind == "i"
