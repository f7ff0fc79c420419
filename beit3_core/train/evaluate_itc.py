"""In-batch retrieval accuracy of the ITC dual encoder against chance, on batches the run did not train on.

Within a batch of B pairs, image -> text accuracy is the fraction of images whose own caption scores highest
among the B captions (and text -> image the other way round); chance is 1 / B. The real test of the step is
zero-shot retrieval on the benchmarks (`evaluation.zeroshot`); this is its quick check on the training data.
"""

import torch

from beit3_core.itc import BEiT3ForITC
from beit3_core.mdm import MDMBatch


@torch.no_grad()
def in_batch_retrieval_report(model: BEiT3ForITC, batches: list[MDMBatch]) -> dict[str, dict[str, float]]:
    """{"i2t" | "t2i": {"accuracy", "chance", "num_pairs"}} over `batches` (eval mode, one process)."""
    was_training = model.training
    model.eval()
    correct = {"i2t": 0.0, "t2i": 0.0}
    pairs = 0
    chance = 0.0
    for batch in batches:
        out = model(batch)
        size = batch.pair.batch_size
        for direction in correct:
            correct[direction] += float(out[f"accuracy/{direction}"]) * size
        pairs += size
        chance += 1.0  # each pair has one right answer among `size`: size * (1 / size)
    model.train(was_training)
    return {d: {"accuracy": c / pairs, "chance": chance / pairs, "num_pairs": pairs} for d, c in correct.items()}
