"""Beam search over a next-token log-probability function, as BEiT-3 decodes captions.

Checked against microsoft/unilm `beit3/engine_for_finetuning.py` (`CaptioningHandler`) and `utils.py`
(`BeamHypotheses`), which follow the Hugging Face transformers 2.x `_generate_beam_search`: every step scores
all beams x vocabulary, keeps the `candidates_per_beam * num_beams` best continuations per example, moves
those ending in EOS (or reaching `max_len`) into a pool of finished hypotheses and continues with the best
`num_beams` others; beams 1..k-1 start at -1e9 so step one does not pick the same token k times. A finished
hypothesis scores sum(log p) / len ** length_penalty, where len counts `<s>` and the final token.
`early_stopping` is off: an example is done when its pool holds `num_beams` hypotheses and the best live
beam cannot beat the worst of them. The best hypothesis per example is returned.

Legend: B examples, K beams, L current length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_START_PENALTY = -1e9


class _Hypotheses:
    """The `num_beams` best finished sequences of one example."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def _score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs / length**self.length_penalty

    @property
    def worst(self) -> float:
        return min(score for score, _ in self.items) if self.items else float("inf")

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        score = self._score(sum_logprobs, len(ids))
        if len(self.items) < self.num_beams or score > self.worst:
            self.items.append((score, ids))
            if len(self.items) > self.num_beams:
                self.items.remove(min(self.items, key=lambda item: item[0]))

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.items) < self.num_beams:
            return False
        return self.worst >= self._score(best_sum_logprobs, cur_len)

    def best(self) -> list[int]:
        return max(self.items, key=lambda item: item[0])[1]


@torch.no_grad()
def beam_search(
    next_logprobs: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    num_beams: int = 3,
    max_len: int = 32,
    length_penalty: float = 0.6,
    candidates_per_beam: int = 3,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Decodes `batch_size` sequences.

    Args:
        next_logprobs: Prefixes [B*K, L] (beams of example b at rows b*K .. b*K+K-1, starting with `<s>`) ->
            log-probabilities of the next token [B*K, V].
        batch_size: Number of examples B.
        bos_id: Start token.
        eos_id: End token; a hypothesis ends when it is chosen.
        pad_id: Filler for the beams of finished examples (never returned).
        num_beams: K.
        max_len: Longest output, counting `<s>` and the last token.
        length_penalty: Exponent of the length normaliser.
        candidates_per_beam: Continuations kept per beam and step (the release's TOPN_PER_BEAM).
        device: Device of the prefixes.

    Returns:
        Per example the best sequence: `<s>` ... ending with `eos_id`, or of length `max_len`.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 to hold <s> and one token, got {max_len}")
    k = num_beams
    beam_scores_BK = torch.zeros(batch_size, k, device=device)
    beam_scores_BK[:, 1:] = _START_PENALTY
    beam_scores = beam_scores_BK.view(-1)  # [B*K]
    ids = torch.full((batch_size * k, 1), bos_id, dtype=torch.long, device=device)
    pools = [_Hypotheses(k, length_penalty) for _ in range(batch_size)]
    done = [False] * batch_size

    cur_len = 1
    while cur_len < max_len:
        logprobs = next_logprobs(ids).float()  # [B*K, V]
        vocab = logprobs.shape[-1]
        scores_BKV = (logprobs + beam_scores[:, None]).view(batch_size, k * vocab)
        top_scores, top_index = scores_BKV.topk(candidates_per_beam * k, dim=1)  # sorted, best first
        next_beams: list[tuple[float, int, int]] = []  # (score, token, source row)
        for b in range(batch_size):
            if done[b]:
                next_beams += [(0.0, pad_id, b * k)] * k
                continue
            live = []
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist(), strict=True):
                row, token = b * k + index // vocab, index % vocab
                if token == eos_id or cur_len + 1 == max_len:
                    pools[b].add(ids[row].tolist() + [token], score)
                else:
                    live.append((score, token, row))
                if len(live) == k:
                    break
            done[b] = pools[b].is_done(top_scores[b].max().item(), cur_len)
            # Every candidate may have finished; fill with dead beams that can never win.
            live += [(_START_PENALTY, pad_id, b * k)] * (k - len(live))
            next_beams += live
        if all(done):
            break
        beam_scores = torch.tensor([s for s, _, _ in next_beams], device=device)
        tokens = torch.tensor([t for _, t, _ in next_beams], device=device)
        rows = torch.tensor([r for _, _, r in next_beams], device=device)
        ids = torch.cat([ids[rows], tokens[:, None]], dim=1)
        cur_len += 1

    for b in range(batch_size):
        if not done[b] and not pools[b].items:
            for row in range(b * k, b * k + k):
                pools[b].add(ids[row].tolist(), beam_scores[row].item())
    return [pool.best() for pool in pools]
