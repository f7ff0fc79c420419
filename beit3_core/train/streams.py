"""Deterministic streaming of pretraining batches from shards (or generated data), resumable at any step.

Each stream kind (image, text, pair) is an endless sequence of records per rank, laid out by
`beit3_core.train.record_plan`: per epoch a seeded shard order split between ranks, `open_shards` shards
interleaved at a time, a seeded shuffle in windows of `shuffle_buffer` records, and the same number of records
on every rank (known from the manifest), so every rank runs the same number of steps.

Step s takes records [(s - 1) * n, s * n) of each kind's stream and draws views and masks from generators
seeded by (seed, s, rank, kind). A batch is therefore a pure function of (seed, s, rank): resuming at step s
replays exactly what an uninterrupted run would read, with no sample skipped or repeated within an epoch.

The shard and offset of every stream position follow from the manifest's counts alone, so records are read
by random access (`beit3_core.train.shard_reader`): DataLoader workers split the steps round-robin (worker w
builds steps s = w, w + K, ..., which the DataLoader returns in step order) and each reads only the records of
its own steps, once; a resumed run reads from its own step's records on, whatever the step.
"""

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from beit3_core.config import BEiT3Config
from beit3_core.data.shard_format import ShardFormatError
from beit3_core.data.views import ViewParams, decode_stored_image, render_view, to_model_input
from beit3_core.masking import IGNORE_INDEX, BlockMaskGenerator, mask_text
from beit3_core.mdm import ImageStream, MDMBatch, PairStream, TextStream
from beit3_core.synthetic import SyntheticMDMData
from beit3_core.train.config import DataSection, PretrainConfig
from beit3_core.train.record_plan import KIND_IDS, StreamPlan
from beit3_core.train.shard_reader import ShardReader, ShardRef

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
PAD_ID, EOS_ID = 1, 2
_READ_CHUNK = 256


def read_shard_refs(shards_dir: str | Path) -> tuple[list[ShardRef], dict]:
    """The shards listed in `manifest.json` of a preprocessing output, and the manifest itself."""
    root = Path(shards_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest.json in {root}: run `beit3 preprocess` first")
    manifest = json.loads(manifest_path.read_text())
    refs = [
        ShardRef(s["name"], root / s["tar"], s["counts"], root / s["parquet"] if s.get("parquet") else None)
        for s in manifest["shards"]
    ]
    return refs, manifest


class RecordStream:
    """The endless record sequence of one kind for one rank (see the module docstring).

    `records(positions)` reads the records at any stream positions; iterating reads them all in order.
    """

    def __init__(
        self,
        refs: list[ShardRef],
        kind: str,
        rank: int,
        world_size: int,
        seed: int,
        data: DataSection,
        reader: ShardReader | None = None,
    ):
        self.refs = [r for r in refs if r.counts.get(kind, 0) > 0]
        if not self.refs:
            raise ValueError(f"no shard holds {kind} records, but the step mix asks for them")
        self.kind, self.rank, self.world_size, self.seed = kind, rank, world_size, seed
        self.on_bad_shard = data.on_bad_shard
        self.bad_shards: set[str] = set()
        if self.on_bad_shard == "skip":  # a missing file is known before reading: every rank plans without it
            for ref in self.refs:
                if not ref.tar.is_file():
                    self._mark_bad(ref, FileNotFoundError(f"{ref.tar} does not exist"))
            self.refs = [r for r in self.refs if r.name not in self.bad_shards]
        counts = [r.counts[kind] for r in self.refs]
        self.plan = StreamPlan(counts, kind, rank, world_size, seed, data.open_shards, data.shuffle_buffer)
        self.reader = reader or ShardReader(max_open=2 * data.open_shards)

    @property
    def num_bad_shards(self) -> int:
        return len(self.bad_shards)

    def _plan(self, epoch: int) -> tuple[list[ShardRef], int, bool]:
        """(this rank's shards in visiting order, records per rank this epoch, stride records?)."""
        plan = self.plan.epoch(epoch)
        return [self.refs[i] for i in plan.shards], plan.length, plan.stride

    def _mark_bad(self, ref: ShardRef, error: Exception) -> None:
        if self.on_bad_shard != "skip":
            raise RuntimeError(f"bad shard {ref.name} ({ref.tar}): {error}") from error
        if ref.name not in self.bad_shards:
            self.bad_shards.add(ref.name)
            logger.warning("skipping bad shard %s (%d so far): %s", ref.name, len(self.bad_shards), error)

    def records(self, positions: range | list[int]) -> list[dict]:
        """The records at these stream positions, in order; records of a bad shard are left out when skipping."""
        located = [self.plan.locate(p) for p in positions]
        out = []
        for shard, offset in located:
            ref = self.refs[shard]
            if ref.name in self.bad_shards:
                continue
            try:
                out.append(self.reader.read(ref, self.kind, offset))
            except (ShardFormatError, OSError) as error:
                self._mark_bad(ref, error)
        return out

    def __iter__(self) -> Iterator[dict]:
        for start in itertools.count(0, _READ_CHUNK):
            yield from self.records(range(start, start + _READ_CHUNK))


class BatchBuilder:
    """Turns the records of one step into an `MDMBatch`: replayed views, stored tokens, fresh masks."""

    def __init__(self, model_config: BEiT3Config, data: DataSection, mask_id: int, seed: int, rank: int):
        self.config, self.data, self.mask_id, self.seed, self.rank = model_config, data, mask_id, seed, rank
        grid = model_config.grid_size
        # Ratio 0 (ITC): no masks at all, not the generator's minimum of one block / one token.
        self.masker = BlockMaskGenerator(grid_size=(grid, grid), mask_ratio=data.image_mask_ratio)
        self.mask_images = data.image_mask_ratio > 0

    def _rng(self, step: int, kind: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, self.rank, KIND_IDS[kind], 2])

    def images(self, records: list[dict], rng: np.random.Generator):
        pixels, tokens = [], []
        for record in records:
            views = record["meta"]["views"]
            view = views[int(rng.integers(len(views)))]
            params = ViewParams(view["top"], view["left"], view["height"], view["width"], bool(view["flip"]))
            image = decode_stored_image(record["image_bytes"])
            pixels.append(render_view(image, params, self.config.img_size))
            tokens.append(view["tokens"])
        grid_tokens = torch.tensor(np.asarray(tokens, dtype=np.int64))
        if grid_tokens.shape[1] != self.config.num_patches:
            raise ValueError(
                f"shards hold {grid_tokens.shape[1]} visual tokens per view but the model has"
                f" {self.config.num_patches} patches: re-tokenize at the model's resolution"
            )
        if self.mask_images:
            mask = torch.from_numpy(self.masker.sample_batch(len(records), rng))
        else:
            mask = torch.zeros(len(records), self.config.num_patches, dtype=torch.bool)
        return to_model_input(np.stack(pixels)), mask, grid_tokens

    def texts(self, records: list[dict], length: int, ratio: float, rng: np.random.Generator, pack: bool = False):
        sequences = [_truncate(record["meta"]["text_ids"], length) for record in records]
        if pack:
            sequences = pack_sequences(sequences, length)
        ids = np.full((len(sequences), length), PAD_ID, dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
        padding = ids == PAD_ID
        if ratio == 0:
            return torch.from_numpy(ids), torch.from_numpy(padding), torch.full(ids.shape, IGNORE_INDEX)
        masked, labels = mask_text(ids, padding, ratio, self.mask_id, rng)
        return torch.from_numpy(masked), torch.from_numpy(padding), torch.from_numpy(labels)

    def build(self, step: int, records: dict[str, list[dict]]) -> MDMBatch:
        batch = MDMBatch()
        if records.get("image"):
            batch.image = ImageStream(*self.images(records["image"], self._rng(step, "image")))
        if records.get("text"):
            d = self.data
            batch.text = TextStream(
                *self.texts(records["text"], d.text_len, d.text_mask_ratio, self._rng(step, "text"), pack=d.pack_texts)
            )
        if records.get("pair"):
            rng = self._rng(step, "pair")
            image, mask, tokens = self.images(records["pair"], rng)
            text, padding, labels = self.texts(
                records["pair"], self.data.pair_text_len, self.data.pair_text_mask_ratio, rng
            )
            batch.pair = PairStream(image, mask, tokens, text, padding, labels)
        return batch


def _truncate(seq: list[int], length: int) -> list[int]:
    return [*seq[: length - 1], EOS_ID] if len(seq) > length else list(seq)  # keep </s> last


def pack_sequences(sequences: list[list[int]], length: int) -> list[list[int]]:
    """Concatenate whole `<s> ... </s>` sequences, in order, into rows of at most `length` tokens.

    Short records (a gloss, a fortune) would otherwise leave most of each row as padding: packing gives
    every row more masked targets and more context at the same cost, and keeps each step's record count
    (and so the exact data position) unchanged.
    """
    rows: list[list[int]] = []
    for seq in sequences:
        if rows and len(rows[-1]) + len(seq) <= length:
            rows[-1].extend(seq)
        else:
            rows.append(list(seq))
    return rows


class StepBatches(torch.utils.data.IterableDataset):
    """Batches for steps start_step + 1, start_step + 2, ... of one rank."""

    def __init__(
        self, cfg: PretrainConfig, model_config: dict, data_info: dict, rank: int, world_size: int, start_step: int
    ):
        super().__init__()
        self.cfg, self.model_config, self.data_info = cfg, BEiT3Config(**model_config), data_info
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        d = cfg.data
        self.per_step = {"image": d.images_per_step, "text": d.texts_per_step, "pair": d.pairs_per_step}

    def __iter__(self) -> Iterator[MDMBatch]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        return self.worker_batches(worker, num_workers)

    def worker_batches(self, worker: int, num_workers: int) -> Iterator[MDMBatch]:
        """The batches of loader worker `worker` of `num_workers`: steps start + 1 + worker, + num_workers, ..."""
        steps = itertools.count(self.start_step + 1 + worker, num_workers)
        if self.cfg.data.shards == SYNTHETIC:
            yield from self._synthetic(steps)
            return
        refs, _ = read_shard_refs(self.cfg.data.shards)
        builder = BatchBuilder(
            self.model_config, self.cfg.data, self.data_info["mask_id"], self.cfg.run.seed, self.rank
        )
        self.reader = ShardReader(max_open=2 * self.cfg.data.open_shards)
        streams = {
            kind: RecordStream(refs, kind, self.rank, self.world_size, self.cfg.run.seed, self.cfg.data, self.reader)
            for kind, n in self.per_step.items()
            if n > 0
        }
        for step in steps:
            records = {
                kind: stream.records(range((step - 1) * self.per_step[kind], step * self.per_step[kind]))
                for kind, stream in streams.items()
            }
            yield builder.build(step, records)

    def _synthetic(self, steps: Iterator[int]) -> Iterator[MDMBatch]:
        for step in steps:
            data = SyntheticMDMData(
                self.model_config,
                text_len=self.cfg.data.text_len,
                seed=self.cfg.run.seed * 1_000_003 + step * 1009 + self.rank,
            )
            yield data.batch(self.per_step["image"], self.per_step["text"], self.per_step["pair"])


def build_step_batches(
    cfg: PretrainConfig, model_config: dict, data_info: dict, rank: int, world_size: int, start_step: int
) -> Iterator[MDMBatch]:
    """An iterator of this rank's batches from step start_step + 1 on, loaded in worker processes."""
    dataset = StepBatches(cfg, model_config, data_info, rank, world_size, start_step)
    if cfg.data.num_workers == 0:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)
