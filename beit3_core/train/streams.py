"""Deterministic streaming of pretraining batches from shards (or generated data), resumable at any step.

Each stream kind (image, text, pair) is an endless sequence of records per rank: epoch e visits the shards
in an order drawn from (seed, kind, e); with at least as many shards as ranks, rank r reads shards
r, r + W, ... of that order (no two ranks read the same file), otherwise every rank reads every shard and
keeps records r, r + W, ...; a seeded shuffle buffer mixes records within the rank; every rank stops the
epoch after the same number of records (the minimum over ranks, known from the manifest), so every rank
runs the same number of steps.

Step s takes records [(s - 1) * n, s * n) of each kind's stream and draws views and masks from generators
seeded by (seed, s, rank, kind). A batch is therefore a pure function of (seed, s, rank): resuming at step s
replays exactly what an uninterrupted run would read, with no sample skipped or repeated within an epoch.

DataLoader workers split the steps round-robin (worker w builds steps s = w, w + K, ...), which the
DataLoader returns in step order; each worker walks the record streams and decodes only its own steps.
"""

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from beit3_core.config import BEiT3Config
from beit3_core.data.shard_format import ShardFormatError, iter_webdataset_shard
from beit3_core.data.views import ViewParams, decode_stored_image, render_view, to_model_input
from beit3_core.masking import IGNORE_INDEX, BlockMaskGenerator, mask_text
from beit3_core.mdm import ImageStream, MDMBatch, PairStream, TextStream
from beit3_core.synthetic import SyntheticMDMData
from beit3_core.train.config import DataSection, PretrainConfig

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
KIND_IDS = {"image": 0, "text": 1, "pair": 2}
PAD_ID, EOS_ID = 1, 2


@dataclass(frozen=True)
class ShardRef:
    name: str
    tar: Path
    counts: dict[str, int]


def read_shard_refs(shards_dir: str | Path) -> tuple[list[ShardRef], dict]:
    """The shards listed in `manifest.json` of a preprocessing output, and the manifest itself."""
    root = Path(shards_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest.json in {root}: run `beit3 preprocess` first")
    manifest = json.loads(manifest_path.read_text())
    refs = [ShardRef(s["name"], root / s["tar"], s["counts"]) for s in manifest["shards"]]
    return refs, manifest


class RecordStream:
    """The endless record sequence of one kind for one rank (see the module docstring)."""

    def __init__(self, refs: list[ShardRef], kind: str, rank: int, world_size: int, seed: int, data: DataSection):
        self.refs = [r for r in refs if r.counts.get(kind, 0) > 0]
        if not self.refs:
            raise ValueError(f"no shard holds {kind} records, but the step mix asks for them")
        self.kind, self.rank, self.world_size, self.seed = kind, rank, world_size, seed
        self.shuffle_buffer = data.shuffle_buffer
        self.open_shards = data.open_shards
        if self.open_shards < 1:
            raise ValueError(f"data.open_shards must be >= 1, got {self.open_shards}")
        self.on_bad_shard = data.on_bad_shard
        self.num_bad_shards = 0

    def _plan(self, epoch: int) -> tuple[list[ShardRef], int, bool]:
        """(this rank's shards in visiting order, records per rank this epoch, stride records?)."""
        order = np.random.default_rng([self.seed, KIND_IDS[self.kind], epoch]).permutation(len(self.refs))
        shards = [self.refs[i] for i in order]
        if len(shards) >= self.world_size:
            per_rank = [sum(s.counts[self.kind] for s in shards[r :: self.world_size]) for r in range(self.world_size)]
            return shards[self.rank :: self.world_size], min(per_rank), False
        return shards, sum(s.counts[self.kind] for s in shards) // self.world_size, True

    def __iter__(self) -> Iterator[dict]:
        for epoch in itertools.count():
            shards, epoch_len, stride = self._plan(epoch)
            if epoch_len == 0:
                raise ValueError(f"{self.kind}: {self.world_size} ranks but too few records for one each")
            records = self._records(shards, stride)
            rng = np.random.default_rng([self.seed, KIND_IDS[self.kind], epoch, self.rank, 1])
            yield from itertools.islice(_shuffled(records, self.shuffle_buffer, rng), epoch_len)

    def _records(self, shards: list[ShardRef], stride: bool) -> Iterator[dict]:
        index = 0
        for sample in _round_robin([self._shard_records(shard) for shard in shards], self.open_shards):
            if not stride or index % self.world_size == self.rank:
                yield sample
            index += 1

    def _shard_records(self, shard: ShardRef) -> Iterator[dict]:
        try:
            for sample in iter_webdataset_shard(shard.tar):
                if sample["kind"] == self.kind:
                    yield sample
        except (ShardFormatError, FileNotFoundError, OSError) as error:
            if self.on_bad_shard != "skip":
                raise RuntimeError(f"bad shard {shard.name} ({shard.tar}): {error}") from error
            self.num_bad_shards += 1
            logger.warning("skipping bad shard %s (%d so far): %s", shard.name, self.num_bad_shards, error)


def _round_robin(sources: list[Iterator[dict]], width: int) -> Iterator[dict]:
    """One record from each of `width` open sources in turn; an exhausted source is replaced by the next.

    A shard usually holds one source's records in file order (a play, a manual): reading several at once
    mixes sources far beyond what the shuffle buffer alone reaches.
    """
    pending = iter(sources)
    active = list(itertools.islice(pending, width))
    while active:
        still_open = []
        for source in active:
            record = next(source, None)
            while record is None:  # exhausted: the next pending source takes its turn
                source = next(pending, None)
                if source is None:
                    break
                record = next(source, None)
            if record is not None:
                yield record
                still_open.append(source)
        active = still_open


def _shuffled(records: Iterator[dict], buffer_size: int, rng: np.random.Generator) -> Iterator[dict]:
    buffer: list[dict] = []
    for record in records:
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = record
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


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
        steps = itertools.count(self.start_step + 1 + worker, num_workers)
        if self.cfg.data.shards == SYNTHETIC:
            yield from self._synthetic(steps)
            return
        refs, _ = read_shard_refs(self.cfg.data.shards)
        builder = BatchBuilder(
            self.model_config, self.cfg.data, self.data_info["mask_id"], self.cfg.run.seed, self.rank
        )
        streams = {
            kind: iter(RecordStream(refs, kind, self.rank, self.world_size, self.cfg.run.seed, self.cfg.data))
            for kind, n in self.per_step.items()
            if n > 0
        }
        position = dict.fromkeys(streams, 0)
        for step in steps:
            records = {}
            for kind, stream in streams.items():
                n = self.per_step[kind]
                target = (step - 1) * n
                for _ in itertools.islice(stream, target - position[kind]):  # other workers' steps
                    pass
                records[kind] = list(itertools.islice(stream, n))
                position[kind] = target + n
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
