"""Where each record of a pretraining stream lives: stream position -> (shard, record offset), in O(1).

A rank's stream of one kind (image, text, pair) is a sequence of epochs. Epoch e:
1. visits the shards in an order drawn from (seed, kind, e); with at least as many shards as ranks, rank r
   takes shards r, r + W, ... of that order, otherwise every rank takes every shard and keeps records
   r, r + W, ... of the interleaved sequence below;
2. interleaves its shards `open_shards` at a time: shards are taken in groups of `open_shards`, and a group
   yields one record from each of its shards in turn, dropping shards as they run out;
3. shuffles in windows of `shuffle_buffer` consecutive positions, each window by a permutation drawn from
   (seed, kind, e, rank, window);
4. stops after the same number of records on every rank (the minimum over ranks, from the manifest counts).

Every step of that is a function of the manifest's per-shard counts, never of the records themselves, so the
shard and offset of any stream position are computed without reading anything: a resumed run starts reading
at its record, whatever the step, and each loader worker reads only the records of its own steps.
"""

import bisect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

KIND_IDS = {"image": 0, "text": 1, "pair": 2}


@dataclass(frozen=True)
class EpochPlan:
    shards: tuple[int, ...]
    """Indices (into the stream's shard list) of this rank's shards, in visiting order."""
    counts: tuple[int, ...]
    """Records of the kind in each of those shards."""
    length: int
    """Records this rank reads in the epoch (equal on every rank)."""
    stride: bool
    """True when every rank reads every shard and keeps every W-th record."""
    group_starts: tuple[int, ...]
    """Interleaved position where each group of `open_shards` shards starts."""


def group_position(counts: tuple[int, ...], q: int) -> tuple[int, int]:
    """(shard within the group, record offset) of position q of a group's round-robin interleaving.

    Round j yields one record of every shard holding more than j records, in group order; rounds before j
    hold f(j) = sum(min(c, j)) records, so the round is the largest j with f(j) <= q (binary search).
    """
    low, high = 0, max(counts)
    while low < high:  # largest j in [0, max) with f(j) <= q
        mid = (low + high + 1) // 2
        if sum(min(c, mid) for c in counts) <= q:
            low = mid
        else:
            high = mid - 1
    rest = q - sum(min(c, low) for c in counts)
    alive = [i for i, c in enumerate(counts) if c > low]
    return alive[rest], low


class StreamPlan:
    """The positions of one kind's record stream for one rank (see the module docstring)."""

    def __init__(
        self, counts: list[int], kind: str, rank: int, world_size: int, seed: int, open_shards: int, window: int
    ):
        if open_shards < 1:
            raise ValueError(f"data.open_shards must be >= 1, got {open_shards}")
        self.all_counts = counts
        self._counts_array = np.asarray(counts, dtype=np.int64)
        self.kind, self.rank, self.world_size, self.seed = kind, rank, world_size, seed
        self.open_shards, self.window = open_shards, max(1, window)
        self._epoch_ends: list[int] = []
        self.epoch = lru_cache(maxsize=4)(self._epoch)
        self._permutation = lru_cache(maxsize=4)(self._window_permutation)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, KIND_IDS[self.kind], epoch]).permutation(len(self.all_counts))

    def _length(self, epoch: int, order: np.ndarray) -> int:
        """Records per rank in the epoch: the smallest rank's share (vectorised: a resume deep into the run sums
        the lengths of every earlier epoch)."""
        w = self.world_size
        if len(order) < w:
            length = int(self._counts_array.sum()) // w
        else:
            length = int(np.bincount(np.arange(len(order)) % w, weights=self._counts_array[order], minlength=w).min())
        if length == 0:
            raise ValueError(f"{self.kind}: {w} ranks but too few records for one each")
        return length

    def _epoch(self, epoch: int) -> EpochPlan:
        order = self._order(epoch)
        length, stride = self._length(epoch, order), len(order) < self.world_size
        shards = [int(i) for i in (order if stride else order[self.rank :: self.world_size])]
        counts = tuple(self.all_counts[i] for i in shards)
        starts = [0]
        for g in range(0, len(counts), self.open_shards):
            starts.append(starts[-1] + sum(counts[g : g + self.open_shards]))
        return EpochPlan(tuple(shards), counts, length, stride, tuple(starts))

    def epoch_of(self, position: int) -> tuple[int, int]:
        """(epoch, position within it) of a stream position; epoch lengths may differ, so they are summed."""
        while not self._epoch_ends or self._epoch_ends[-1] <= position:
            start, epoch = (self._epoch_ends[-1] if self._epoch_ends else 0), len(self._epoch_ends)
            self._epoch_ends.append(start + self._length(epoch, self._order(epoch)))
        epoch = bisect.bisect_right(self._epoch_ends, position)
        return epoch, position - (self._epoch_ends[epoch - 1] if epoch else 0)

    def _window_permutation(self, epoch: int, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, KIND_IDS[self.kind], epoch, self.rank, index, 1])
        return rng.permutation(size)

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index into the stream's list, record offset of the kind in that shard) of a stream position."""
        epoch, p = self.epoch_of(position)
        plan = self.epoch(epoch)
        total = plan.group_starts[-1]  # this rank's records; with stride, its share of the interleaving
        if plan.stride:
            total = (total - 1 - self.rank) // self.world_size + 1
        index, offset = divmod(p, self.window)
        size = min(self.window, total - index * self.window)
        q = index * self.window + int(self._permutation(epoch, index, size)[offset])
        if plan.stride:
            q = self.rank + self.world_size * q  # every W-th record of the full interleaving
        group = bisect.bisect_right(plan.group_starts, q) - 1
        first = group * self.open_shards
        shard, record = group_position(plan.counts[first : first + self.open_shards], q - plan.group_starts[group])
        return plan.shards[first + shard], record
