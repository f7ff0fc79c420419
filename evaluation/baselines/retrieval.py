"""Image-text retrieval under a random ranking, in closed form.

With continuous random scores every ranking of the candidates is equally likely. Text retrieval (an image
queries the T captions, m of them its own) hits at K with the hypergeometric probability 1 - C(T - m, K) / C(T, K);
image retrieval (a caption queries the N images, one its own) hits at K with probability K / N. With one caption
per image both are K / N. The recalls are means over queries, so their variances are the sums of the per-query
variances over the number of queries squared; queries are independent (each ranks its own row or column of
i.i.d. scores). `average_score` (the mean of the six recalls) is not a sum of independent parts: a high score of
a matching pair makes both directions hit. Its standard error is measured instead: the official scorer on
`SIMULATIONS` seeded random score matrices (for splits up to `MAX_SIMULATED` image-caption scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evaluation.baselines.stats import baseline_result

KS = (1, 5, 10)
SIMULATIONS = 200
MAX_SIMULATED = 5_000_000
"""Scores per matrix: Flickr30K's 1,000 x 5,000 test split is simulated, COCO's 5,000 x 25,010 is not."""
SEED = 0


def _hit_probability(num_candidates: int, num_correct: int, k: int) -> float:
    """P(at least one of `num_correct` items ranks in the top k of `num_candidates`) for a uniform ranking."""
    k = min(k, num_candidates)
    return 1.0 - math.comb(num_candidates - num_correct, k) / math.comb(num_candidates, k)


def simulated_stderr(
    captions_per_image: Sequence[int], metric: str, draws: int = SIMULATIONS, seed: int = SEED
) -> float:
    """Standard deviation of `metric` of the official scorer over seeded random score matrices."""
    import torch

    from evaluation.metrics.retrieval import retrieval_recall

    text_to_image = torch.tensor([row for row, m in enumerate(captions_per_image) for _ in range(m)])
    generator = torch.Generator().manual_seed(seed)
    shape = (len(captions_per_image), len(text_to_image))
    values = torch.tensor(
        [retrieval_recall(torch.rand(shape, generator=generator), text_to_image)[metric] for _ in range(draws)]
    )
    return float(values.std())


def random_ranking_recall(captions_per_image: Sequence[int], ks: Sequence[int] = KS) -> dict:
    """The retrieval baseline of a split with these caption counts per image (metrics and stderr in percent).

    Returns:
        The `evaluation.baselines` record with `tr_r{k}`, `ir_r{k}` and `average_score` as the official
        retrieval scorer names them.
    """
    if not captions_per_image or min(captions_per_image) < 1:
        raise ValueError("every test image needs at least one caption")
    num_images, num_texts = len(captions_per_image), sum(captions_per_image)
    tr = [{k: _hit_probability(num_texts, m, k) for k in ks} for m in captions_per_image]
    ir = {k: min(k, num_images) / num_images for k in ks}
    metrics, stderr = {}, {}
    for k in ks:
        metrics[f"tr_r{k}"] = 100.0 * sum(p[k] for p in tr) / num_images
        stderr[f"tr_r{k}"] = 100.0 * math.sqrt(sum(p[k] * (1 - p[k]) for p in tr)) / num_images
        metrics[f"ir_r{k}"] = 100.0 * ir[k]
        stderr[f"ir_r{k}"] = 100.0 * math.sqrt(ir[k] * (1 - ir[k]) / num_texts)
    metrics["average_score"] = sum(metrics.values()) / (2 * len(ks))
    method = "closed form"
    if num_images * num_texts <= MAX_SIMULATED and tuple(ks) == KS:
        stderr["average_score"] = simulated_stderr(captions_per_image, "average_score")
        method += f"; average_score: {SIMULATIONS} random score matrices scored officially, seed {SEED}"
    predictor = f"random ranking ({num_images} images, {num_texts} captions)"
    counts = {"num_images": num_images, "num_texts": num_texts}
    return baseline_result(predictor, metrics | counts, stderr, method, num_images)
