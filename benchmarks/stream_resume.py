"""Time to the first batch of a resumed pretraining stream, early in the run against deep into it, and the
read amplification of K loader workers.

Writes a few real shards with the project's shard writer (`tests/support/shards.py`), links them under
`--shards` names into one manifest (a large generated dataset without generating every record), then times
`StepBatches(start_step=s)` up to its first batch for each resume step, in the training process and through a
DataLoader with worker processes, alternating the steps over `--rounds` rounds (median). Read amplification:
the records and bytes that K workers' streams read for `--amplification-steps` steps, over what the steps use.

    python benchmarks/stream_resume.py --shards 1000 --steps 10 100000
"""

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.model_inputs import micro_pretrain_overrides  # noqa: E402
from support.shards import build_test_shards  # noqa: E402

from beit3_core.train.config import build_config  # noqa: E402
from beit3_core.train.launcher import resolve_model_config  # noqa: E402
from beit3_core.train.streams import StepBatches, build_step_batches  # noqa: E402
from preprocessing.shard_writer import read_manifest, write_manifest  # noqa: E402


def linked_dataset(folder: Path, num_shards: int, num_real: int = 8) -> Path:
    real = build_test_shards(folder / "real", num_shards=num_real, per_kind=8)
    manifest = read_manifest(real)
    out = folder / "shards"
    out.mkdir()
    entries = []
    for i in range(num_shards):
        entry = dict(manifest["shards"][i % num_real], name=f"linked-{i:06d}")
        for kind in ("tar", "parquet"):
            os.link(real / entry[kind], out / f"{entry['name']}.{kind}")
            entry[kind] = f"{entry['name']}.{kind}"
        entries.append(entry)
    write_manifest(out, manifest | {"shards": entries})
    return out


def first_batch_seconds(cfg, model_config, data_info, step: int, loader: bool) -> float:
    start = time.perf_counter()
    if loader:
        next(build_step_batches(cfg, model_config, data_info, rank=0, world_size=1, start_step=step))
    else:
        next(iter(StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=step)))
    return time.perf_counter() - start


def read_amplification(cfg, model_config, data_info, num_steps: int, num_workers: int) -> tuple[float, float]:
    """(records read / records used, bytes read / bytes read by one worker) over the first `num_steps` steps."""
    used = num_steps * (cfg.data.images_per_step + cfg.data.texts_per_step + cfg.data.pairs_per_step)
    totals = []
    for workers in (1, num_workers):
        records = bytes_read = 0
        for worker in range(workers):
            dataset = StepBatches(cfg, model_config, data_info, rank=0, world_size=1, start_step=0)
            for _ in itertools.islice(dataset.worker_batches(worker, workers), len(range(worker, num_steps, workers))):
                pass
            records, bytes_read = records + dataset.reader.stats.records, bytes_read + dataset.reader.stats.bytes
        totals.append((records, bytes_read))
    return totals[1][0] / used, totals[1][1] / totals[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--amplification-steps", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = linked_dataset(Path(tmp), args.shards)
        overrides = micro_pretrain_overrides(loader_workers=args.loader_workers, warmup_steps=1)
        overrides["data"] |= {"shards": str(shards)}
        cfg = build_config("tiny_cpu", overrides)
        model_config, data_info = resolve_model_config(cfg)
        per_kind = cfg.data.images_per_step
        print(f"{args.shards} shards, {per_kind} records per kind per step, shuffle_buffer {cfg.data.shuffle_buffer}")
        for loader in (False, True):
            times: dict[int, list[float]] = {step: [] for step in args.steps}
            for _ in range(args.rounds):
                for step in args.steps:
                    times[step].append(first_batch_seconds(cfg, model_config, data_info, step, loader))
            where = f"DataLoader, {args.loader_workers} workers" if loader else "in process"
            for step in args.steps:
                print(f"| {where} | resume at step {step} | {statistics.median(times[step]):.3f} s |")
        workers = max(2, args.loader_workers)
        records, bytes_ratio = read_amplification(cfg, model_config, data_info, args.amplification_steps, workers)
        print(
            f"read amplification, {workers} workers, {args.amplification_steps} steps: records read / used"
            f" {records:.3f}, bytes read / bytes read by 1 worker {bytes_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
