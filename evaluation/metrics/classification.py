"""Classification metrics: top-k accuracy (ImageNet-1k) and NLVR2 accuracy / consistency.

Top-k accuracy follows `timm.utils.accuracy`, which microsoft/unilm `beit3/engine_for_finetuning.py` uses for
ImageNet: an example counts for top-k when its label is among the k largest logits. NLVR2 (Suhr et al., "A
Corpus for Reasoning About Natural Language Grounded in Photographs", ACL 2019) follows lil-lab/nlvr
`nlvr2/eval/metrics.py`: accuracy over examples, and consistency = fraction of sentences all of whose examples
(the same sentence paired with different image pairs) are correct. Examples of one sentence share their
identifier "split-setid-pairid-sentenceid" up to the pair id. All values are in percent.
"""

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import torch

from evaluation.metrics.ids import check_same_ids


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy from logits.

    Args:
        logits: Scores of shape [num_examples, num_classes].
        targets: Class indices of shape [num_examples].
        ks: Cut-offs; each must be between 1 and num_classes.

    Returns:
        `acc{k}` for every k, in percent.

    Raises:
        ValueError: On shape mismatch, an empty batch or a k outside [1, num_classes].
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    num_examples, num_classes = logits.shape
    if num_examples == 0:
        raise ValueError("no examples to score")
    if not ks or min(ks) < 1 or max(ks) > num_classes:
        raise ValueError(f"every k must lie in [1, {num_classes}], got {tuple(ks)}")
    top_NK = logits.topk(max(ks), dim=1).indices
    match_NK = top_NK == targets.to(top_NK.device)[:, None]
    return {f"acc{k}": 100.0 * match_NK[:, :k].any(dim=1).sum().item() / num_examples for k in ks}


def ranked_accuracy(
    predictions: Mapping[Hashable, Sequence[int]], labels: Mapping[Hashable, int], ks: Sequence[int] = (1,)
) -> dict[str, float]:
    """Top-k accuracy from ranked class predictions, as found in prediction files.

    Args:
        predictions: Example id -> class indices, best first (at least max(ks) of them).
        labels: Example id -> true class index; ids must equal those of `predictions`.
        ks: Cut-offs.

    Returns:
        `acc{k}` for every k, in percent.

    Raises:
        ValueError: If the id sets differ, nothing is scored, or a ranking is shorter than max(ks).
    """
    check_same_ids(labels, predictions, what="example ids")
    if not labels:
        raise ValueError("no examples to score")
    short = [key for key, ranked in predictions.items() if len(ranked) < max(ks)]
    if short:
        raise ValueError(f"{len(short)} predictions rank fewer than {max(ks)} classes (e.g. {short[0]!r})")
    return {
        f"acc{k}": 100.0 * sum(labels[key] in list(ranked)[:k] for key, ranked in predictions.items()) / len(labels)
        for k in ks
    }


def nlvr2_scores(predictions: Mapping[str, bool | None], labels: Mapping[str, bool]) -> dict[str, float | int]:
    """NLVR2 accuracy and consistency.

    Args:
        predictions: Identifier -> predicted truth value; None (a prediction that is not a label) is never right.
        labels: Identifier -> true truth value; ids must equal those of `predictions`.

    Returns:
        `accuracy` and `consistency` in percent, `num_examples` and `num_sentences`.

    Raises:
        ValueError: If the id sets differ, nothing is scored, or an identifier lacks the four dash fields.
    """
    check_same_ids(labels, predictions, what="identifiers")
    if not labels:
        raise ValueError("no examples to score")
    all_correct: dict[str, bool] = defaultdict(lambda: True)
    num_correct = 0
    for identifier, label in labels.items():
        correct = predictions[identifier] == label
        num_correct += correct
        group = sentence_group(identifier)
        all_correct[group] = all_correct[group] and correct
    return {
        "accuracy": 100.0 * num_correct / len(labels),
        "consistency": 100.0 * sum(all_correct.values()) / len(all_correct),
        "num_examples": len(labels),
        "num_sentences": len(all_correct),
    }


def sentence_group(identifier: str) -> str:
    """The identifier with its pair-id field blanked ("dev-850-0-0" -> "dev-850--0"), as the official script does."""
    fields = identifier.split("-")
    if len(fields) < 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not of the form split-setid-pairid-sentenceid")
    fields[2] = ""
    return "-".join(fields)
