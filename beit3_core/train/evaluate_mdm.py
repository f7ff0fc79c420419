"""Masked-token accuracy against the most-frequent-token baseline, per stream kind.

The baseline predicts, at every masked position, the token that is most frequent among the targets of the
same batches: what a model that ignores its input can reach at best. A model that learned something from
context beats it clearly.
"""

import collections

import torch

from beit3_core.masking import IGNORE_INDEX
from beit3_core.mdm import BEiT3ForMDM, MDMBatch


@torch.no_grad()
def masked_token_report(model: BEiT3ForMDM, batches: list[MDMBatch]) -> dict[str, dict[str, float]]:
    """{kind: {"accuracy", "baseline", "num_masked"}} over `batches` (eval mode, fresh masks of the loader)."""
    was_training = model.training
    model.eval()
    correct: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    targets: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for batch in batches:
        out = model(batch)
        for kind, labels in _targets(batch).items():
            num = int(out[f"num_masked/{kind}"])
            correct[kind] += float(out[f"accuracy/{kind}"]) * num
            counts[kind] += num
            targets[kind].update(labels.tolist())
    model.train(was_training)
    return {
        kind: {
            "accuracy": correct[kind] / max(1, counts[kind]),
            "baseline": targets[kind].most_common(1)[0][1] / max(1, counts[kind]) if targets[kind] else 0.0,
            "num_masked": counts[kind],
        }
        for kind in counts
    }


def _targets(batch: MDMBatch) -> dict[str, torch.Tensor]:
    found = {}
    if batch.image is not None:
        found["image"] = batch.image.visual_tokens[batch.image.image_mask]
    if batch.text is not None:
        found["text"] = batch.text.text_labels[batch.text.text_labels != IGNORE_INDEX]
    if batch.pair is not None:
        found["pair_image"] = batch.pair.visual_tokens[batch.pair.image_mask]
        found["pair_text"] = batch.pair.text_labels[batch.pair.text_labels != IGNORE_INDEX]
    return found
