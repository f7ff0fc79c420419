"""What the pretraining stream reads: each record once per epoch whatever the loader workers, and a resume
reads its own step's records only.

Reads are counted by the shard reader of each worker's stream (`ShardReader.stats`: records and member bytes
read with `os.pread`); the old design, in which every worker walked every record, read K times as much.
"""

import dataclasses
import itertools

import pytest
import torch
from support.model_inputs import micro_pretrain_overrides
from support.shards import build_test_shards

from beit3_core.train.config import build_config
from beit3_core.train.launcher import resolve_model_config
from beit3_core.train.streams import StepBatches

PER_STEP = 4  # images, texts and pairs per step (micro_pretrain_overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = build_test_shards(tmp_path_factory.mktemp("reads") / "shards", num_shards=5, per_kind=12)
    overrides = micro_pretrain_overrides(loader_workers=0, warmup_steps=1)
    overrides["data"] |= {"shards": str(folder), "shuffle_buffer": 16, "open_shards": 2}
    cfg = build_config("tiny_cpu", overrides)
    model_config, data_info = resolve_model_config(cfg)
    return cfg, model_config, data_info


def tensors(batch) -> list[torch.Tensor]:
    return [t for stream in batch.streams() for t in dataclasses.astuple(stream)]


def assert_same(a, b) -> None:
    for x, y in zip(tensors(a), tensors(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("num_workers", [2, 3])
def test_each_record_is_read_once_whatever_the_number_of_workers(setup, num_workers):
    cfg, model_config, data_info = setup
    num_steps = 12  # within the first epoch (60 records per kind, 4 per step)
    single = StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=0)
    reference = list(itertools.islice(single.worker_batches(0, 1), num_steps))
    assert single.reader.stats.records == num_steps * 3 * PER_STEP

    records = bytes_read = 0
    for worker in range(num_workers):
        dataset = StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=0)
        batches = dataset.worker_batches(worker, num_workers)
        for step in range(worker + 1, num_steps + 1, num_workers):
            assert_same(next(batches), reference[step - 1])
        records += dataset.reader.stats.records
        bytes_read += dataset.reader.stats.bytes
    assert records == single.reader.stats.records  # read amplification 1.0, not num_workers
    assert bytes_read == single.reader.stats.bytes


@pytest.mark.parametrize("start_step", [3, 37])
def test_resume_reads_only_its_own_records(setup, start_step):
    cfg, model_config, data_info = setup
    uninterrupted = StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=0)
    expected = next(itertools.islice(uninterrupted.worker_batches(0, 1), start_step, None))
    resumed = StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=start_step)
    assert_same(next(resumed.worker_batches(0, 1)), expected)  # step 37 is in the third epoch
    assert resumed.reader.stats.records == 3 * PER_STEP
    assert resumed.reader.stats.index_scans <= 5
