"""Trivial baselines of the benchmark units: what a predictor that ignores its input scores on the test set.

Every unit's baseline is scored on the same split the fine-tuned model is scored on, with the unit's official
scorer, and carries the standard error of that number on that split (`stats`): the binomial
sqrt(p (1 - p) / n) where the metric is a per-item rate, a closed form where one exists (random ranking), a
seeded bootstrap over test items otherwise. A result of a fine-tuned model is meaningful only by its margin
over the baseline in those standard errors.

    predictors   majority_label, ranked_by_frequency, most_frequent_answer (plain labels and answers)
    captioning   constant_caption (the one caption every image gets), cider_stderr
    retrieval    random_ranking_recall (R@K of a random ranking in closed form)
    dense        majority_pixel_class, miou_stderr, majority_category, whole_image_prior, box_ap_stderr
    scratch      random_init_like (the random-initialisation control of a fine-tune)
    stats        binomial_stderr, bootstrap_stderr, margin, baseline_result, paired_difference (seeded pairs)

Each task holds its own baseline (`evaluation.tasks.base.Task.baseline`, built from the modules above);
`unit_baseline` reads a unit's splits and calls it, `zeroshot_baseline` does the same for a zero-shot retrieval
unit. Every baseline is a JSON-plain dict:

    {"predictor": what it predicts, "metrics": {name: value}, "stderr": {name: value},
     "stderr_method": "binomial" | "closed form" | "bootstrap (R resamples, seed S)", "num_items": n}
"""

from evaluation.baselines.predictors import majority_label, most_frequent_answer, ranked_by_frequency
from evaluation.baselines.stats import baseline_result, binomial_stderr, bootstrap_stderr, margin, paired_difference
from evaluation.baselines.unit import unit_baseline, zeroshot_baseline

__all__ = [
    "baseline_result",
    "binomial_stderr",
    "bootstrap_stderr",
    "majority_label",
    "margin",
    "most_frequent_answer",
    "paired_difference",
    "ranked_by_frequency",
    "unit_baseline",
    "zeroshot_baseline",
]
