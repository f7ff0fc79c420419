"""The constant-caption baseline: every test image gets the same training caption, scored by the official
caption scorer (pycocoevalcap through `evaluation.metrics.captioning`).

The caption: among the `NUM_CANDIDATES` most frequent training captions (compared lower-cased with collapsed
whitespace; ties: shorter, then alphabetical), the one with the best CIDEr when given to every image of a seeded
sample of training images. Scored on the training split only, so the test split picks nothing. Its standard
error on the test split is a seeded bootstrap over test images of CIDEr (the scorer recomputes CIDEr's document
frequencies on every resample, as it would on a test set of that composition).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from evaluation.baselines.stats import bootstrap_stderr

NUM_CANDIDATES = 20
SELECTION_IMAGES = 300
SEED = 0


def _normalise(caption: str) -> str:
    return " ".join(caption.lower().split())


def _tokenize(groups: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenize every caption (one Java call), as the official scorer does before CIDEr."""
    batch = {key: [{"caption": " ".join(c.splitlines())} for c in captions] for key, captions in groups.items()}
    return PTBTokenizer().tokenize(batch)


def constant_caption(training: Mapping[Hashable, Sequence[str]], seed: int = SEED) -> str:
    """The training caption with the best CIDEr as a constant prediction on the training images.

    Args:
        training: Training image id -> its reference captions.
    """
    counts = Counter(_normalise(c) for captions in training.values() for c in captions)
    if not counts:
        raise ValueError("no training captions to choose a constant caption from")
    candidates = sorted(counts, key=lambda c: (-counts[c], len(c), c))[:NUM_CANDIDATES]
    ids = sorted(training, key=str)
    sample = random.Random(seed).sample(ids, min(SELECTION_IMAGES, len(ids)))
    tokens = _tokenize({("ref", i): training[i] for i in sample} | {("cand", j): [c] for j, c in enumerate(candidates)})
    refs = {i: tokens[("ref", i)] for i in sample}

    def cider(j: int) -> float:
        return float(Cider().compute_score(refs, {i: tokens[("cand", j)] for i in sample})[0])

    best = max(range(len(candidates)), key=lambda j: (cider(j), -j))
    return candidates[best]


def cider_stderr(references: Mapping[Hashable, Sequence[str]], caption: str) -> float:
    """Bootstrap standard error of CIDEr of `caption` given to every test image."""
    tokens = _tokenize({("ref", i): refs for i, refs in references.items()} | {("hyp", None): [caption]})
    hyp = tokens[("hyp", None)]
    ids = list(references)

    def score(resample: list[Hashable]) -> float:
        refs = {j: tokens[("ref", i)] for j, i in enumerate(resample)}  # duplicates as distinct images
        return float(Cider().compute_score(refs, {j: hyp for j in refs})[0])

    return bootstrap_stderr(ids, score)
