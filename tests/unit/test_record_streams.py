"""Record streams of pretraining: shard interleaving, text packing, and what a rank reads per epoch."""

import collections
import itertools

import numpy as np
import pytest
from support.shards import build_test_shards

from beit3_core.train.config import DataSection
from beit3_core.train.record_plan import StreamPlan, group_position
from beit3_core.train.streams import EOS_ID, BatchBuilder, RecordStream, pack_sequences, read_shard_refs


def round_robin_brute_force(counts: list[int]) -> list[tuple[int, int]]:
    """One record of each shard in turn, shards dropping out as they run out: (shard, offset) per position."""
    sources = [iter([(i, k) for k in range(c)]) for i, c in enumerate(counts)]
    out = []
    while sources:
        alive = []
        for source in sources:
            item = next(source, None)
            if item is not None:
                out.append(item)
                alive.append(source)
        sources = alive
    return out


@pytest.mark.parametrize("seed", range(5))
def test_group_position_equals_a_round_robin(seed):
    rng = np.random.default_rng(seed)
    counts = tuple(int(c) for c in rng.integers(0, 9, size=int(rng.integers(1, 7))))
    if sum(counts) == 0:
        counts = (1, *counts)
    assert [group_position(counts, q) for q in range(sum(counts))] == round_robin_brute_force(list(counts))


@pytest.mark.parametrize("world_size", [1, 3, 20])
def test_plan_covers_each_record_at_most_once_per_epoch(world_size):
    counts = [int(c) for c in np.random.default_rng(world_size).integers(0, 30, size=13)]
    for epoch_start in (0, 1):
        seen, lengths = collections.Counter(), set()
        for rank in range(world_size):
            plan = StreamPlan(counts, "text", rank, world_size, seed=3, open_shards=4, window=7)
            start = sum(plan.epoch(e).length for e in range(epoch_start))
            lengths.add(plan.epoch(epoch_start).length)
            seen.update(plan.locate(start + p) for p in range(plan.epoch(epoch_start).length))
        assert max(seen.values()) == 1 and len(lengths) == 1
        assert all(shard < len(counts) and offset < counts[shard] for shard, offset in seen)
        # The epoch is the smallest rank's share: every record of the smallest rank's shards is read.
        assert len(seen) == world_size * lengths.pop()


def test_pack_sequences_keeps_every_token_in_order_and_fills_rows():
    rng = np.random.default_rng(0)
    sequences = [[0, *rng.integers(3, 50, size=n).tolist(), EOS_ID] for n in rng.integers(1, 20, size=40)]
    rows = pack_sequences(sequences, 24)
    assert [t for row in rows for t in row] == [t for s in sequences for t in s]
    assert all(len(row) <= 24 for row in rows)
    assert len(rows) < len(sequences)
    # Greedy: the next sequence never fits into the row before it.
    boundaries = np.cumsum([0, *[len(s) for s in sequences]])
    starts = np.cumsum([0, *[len(r) for r in rows]])[1:-1]
    for start in starts:
        first = int(np.searchsorted(boundaries, start))
        assert len(rows[list(starts).index(start)]) + len(sequences[first]) > 24


def test_packed_text_batch_has_fewer_rows_and_the_same_targets():
    data = DataSection(text_len=32, pack_texts=True)
    from beit3_core.config import get_config

    builder = BatchBuilder(get_config("beit3_tiny", vocab_size=64, img_size=32), data, mask_id=63, seed=0, rank=0)
    records = [{"meta": {"text_ids": [0, *range(3, 3 + n), EOS_ID]}} for n in (3, 9, 1, 14, 5, 30, 2)]
    packed, padding, labels = builder.texts(records, 32, 0.15, np.random.default_rng(0), pack=True)
    plain, plain_padding, _ = builder.texts(records, 32, 0.15, np.random.default_rng(0), pack=False)
    assert packed.shape[0] < plain.shape[0] == len(records)
    assert int((~padding).sum()) == int((~plain_padding).sum())  # no token lost, long record truncated alike
    assert (labels != -100).sum() > 0


@pytest.fixture(scope="module")
def shard_refs(tmp_path_factory):
    folder = build_test_shards(tmp_path_factory.mktemp("streams") / "shards", num_shards=5, per_kind=12)
    return read_shard_refs(folder)[0]


@pytest.mark.parametrize("world_size", [1, 2, 7])
def test_open_shards_changes_the_order_not_the_records(shard_refs, world_size):
    def epoch(open_shards: int, rank: int) -> list[str]:
        stream = RecordStream(
            shard_refs, "text", rank, world_size, seed=3, data=DataSection(open_shards=open_shards, shuffle_buffer=1)
        )
        per_rank = stream._plan(0)[1]
        return [record["key"] for record in itertools.islice(stream, per_rank)]

    total = sum(ref.counts["text"] for ref in shard_refs)
    for open_shards in (1, 8):
        ranks = [epoch(open_shards, rank) for rank in range(world_size)]
        seen = [key for keys in ranks for key in keys]
        assert len(set(seen)) == len(seen)  # no record on two ranks or twice on one
        assert len({len(keys) for keys in ranks}) == 1 and len(seen) > total - world_size * 12
    if world_size == 1:
        one, many = epoch(1, 0), epoch(8, 0)
        assert collections.Counter(one) == collections.Counter(many)
        # One shard after another with a single open shard; all five shards in the first five records with eight.
        assert len({key.split("-")[1] for key in one[:5]}) == 1
        assert len({key.split("-")[1] for key in many[:5]}) == 5


def test_open_shards_must_be_positive(shard_refs):
    with pytest.raises(ValueError, match="open_shards"):
        RecordStream(shard_refs, "text", 0, 1, seed=0, data=DataSection(open_shards=0))
