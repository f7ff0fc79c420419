"""Trivial baselines of the benchmark units: what a predictor that ignores its input scores on the test set.

Every unit's baseline is scored on the same split the fine-tuned model is scored on, with the unit's official
scorer, and carries the standard error of that number on that split (`stats`): the binomial
sqrt(p (1 - p) / n) where the metric is a per-item rate, a closed form where one exists (random ranking), a
seeded bootstrap over test items otherwise. A result of a fine-tuned model is meaningful only by its margin
over the baseline in those standard errors.

    majority_label(labels)                 -> the most frequent training label (ties: the smallest)
    ranked_by_frequency(labels, k)         -> the k most frequent labels, best first
    most_frequent_answer(answer_lists)     -> the answer human annotators gave most often
    constant_caption(captions, references) -> the caption every image receives (`captions`)
    random_ranking_recall(...)             -> R@K of a random ranking in closed form (`retrieval`)

Each task holds its own baseline (`evaluation.tasks.base.Task.baseline`); `unit_baseline` reads a unit's
splits and calls it. Every baseline is a JSON-plain dict:

    {"predictor": what it predicts, "metrics": {name: value}, "stderr": {name: value},
     "stderr_method": "binomial" | "closed form" | "bootstrap (R resamples, seed S)", "num_items": n}
"""

from evaluation.baselines.predictors import majority_label, most_frequent_answer, ranked_by_frequency
from evaluation.baselines.stats import baseline_result, binomial_stderr, bootstrap_stderr, margin
from evaluation.baselines.unit import unit_baseline, zeroshot_baseline

__all__ = [
    "baseline_result",
    "binomial_stderr",
    "bootstrap_stderr",
    "majority_label",
    "margin",
    "most_frequent_answer",
    "ranked_by_frequency",
    "unit_baseline",
    "zeroshot_baseline",
]
