"""The published BEiT-3 numbers (the paper's giant model and the released base/large checkpoints) per benchmark
unit, the paper's twelve radar axes, and each unit's trivial baseline.

Numbers as collected in the project's benchmark spec (section 1): giant = the paper's model (1.9B); base and
large = the released checkpoints' fine-tuned results from the release's README, which are not the paper's model.
Values are on our metrics' scale (percent), except CIDEr, which our scorer reports as a fraction and papers
print x100 (`display_scale`).
"""

from dataclasses import dataclass

MODEL_SIZES = ("giant (paper)", "base (release)", "large (release)")

# (unit, metric) -> {model size: number}
REFERENCE: dict[tuple[str, str], dict[str, float]] = {
    ("imagenet", "acc1"): {"giant (paper)": 89.6, "base (release)": 85.4, "large (release)": 87.6},
    ("imagenet", "acc5"): {"base (release)": 97.6, "large (release)": 98.3},
    ("ade20k", "mIoU"): {"giant (paper)": 62.8},
    ("coco_detection", "bbox_AP"): {"giant (paper)": 63.7},
    ("coco_detection", "segm_AP"): {"giant (paper)": 54.8},
    ("nlvr2", "accuracy"): {"giant (paper)": 92.58, "base (release)": 84.4, "large (release)": 89.4},
    ("vqav2", "overall"): {"giant (paper)": 84.19, "base (release)": 77.65, "large (release)": 81.85},
    ("coco_captioning", "CIDEr"): {"giant (paper)": 147.6, "base (release)": 133.6, "large (release)": 143.2},
    ("nocaps", "CIDEr"): {"base (release)": 104.4, "large (release)": 120.2},
    ("coco_retrieval", "tr_r1"): {"giant (paper)": 84.8, "base (release)": 79.1, "large (release)": 82.1},
    ("coco_retrieval", "tr_r5"): {"giant (paper)": 96.5},
    ("coco_retrieval", "tr_r10"): {"giant (paper)": 98.3},
    ("coco_retrieval", "ir_r1"): {"giant (paper)": 67.2, "base (release)": 61.4, "large (release)": 63.4},
    ("coco_retrieval", "ir_r5"): {"giant (paper)": 87.7},
    ("coco_retrieval", "ir_r10"): {"giant (paper)": 92.8},
    ("flickr30k_retrieval", "tr_r1"): {"giant (paper)": 98.0, "base (release)": 96.3, "large (release)": 97.2},
    ("flickr30k_retrieval", "tr_r5"): {"giant (paper)": 100.0},
    ("flickr30k_retrieval", "tr_r10"): {"giant (paper)": 100.0},
    ("flickr30k_retrieval", "ir_r1"): {"giant (paper)": 90.3, "base (release)": 86.2, "large (release)": 88.1},
    ("flickr30k_retrieval", "ir_r5"): {"giant (paper)": 98.7},
    ("flickr30k_retrieval", "ir_r10"): {"giant (paper)": 99.5},
    # Large: users' unofficial evaluation of the released ITC checkpoint (unilm issues #1435, #1382).
    ("flickr30k_zeroshot", "tr_r1"): {"giant (paper)": 94.9, "large (release)": 90.7},
    ("flickr30k_zeroshot", "tr_r5"): {"giant (paper)": 99.9},
    ("flickr30k_zeroshot", "tr_r10"): {"giant (paper)": 100.0},
    ("flickr30k_zeroshot", "ir_r1"): {"giant (paper)": 81.5, "large (release)": 78.0},
    ("flickr30k_zeroshot", "ir_r5"): {"giant (paper)": 95.6},
    ("flickr30k_zeroshot", "ir_r10"): {"giant (paper)": 97.8},
}
REFERENCE_NOTES = {
    ("flickr30k_zeroshot", "tr_r1"): "large: unofficial, users' evaluation of the released ITC checkpoint",
    ("nlvr2", "accuracy"): "test-P",
    ("vqav2", "overall"): "test-dev (ours: the evaluation split of the run)",
    ("coco_detection", "bbox_AP"): "test-dev",
}

DISPLAY_SCALE = {("coco_captioning", "CIDEr"): 100.0, ("nocaps", "CIDEr"): 100.0}
"""Our value x scale = the published scale."""

UNITS = (
    "imagenet",
    "ade20k",
    "coco_detection",
    "coco_retrieval",
    "flickr30k_retrieval",
    "flickr30k_zeroshot",
    "coco_zeroshot",
    "vqav2",
    "coco_captioning",
    "nocaps",
    "nlvr2",
)
HEADLINE = {
    "imagenet": ("acc1",),
    "ade20k": ("mIoU",),
    "coco_detection": ("bbox_AP",),
    "nlvr2": ("accuracy",),
    "vqav2": ("overall",),
    "coco_captioning": ("CIDEr",),
    "nocaps": ("CIDEr",),
}
RETRIEVAL_HEADLINE = ("average_score", "tr_r1", "ir_r1")
"""Retrieval units lead with the mean of the six recalls (the release's model-selection metric, steadier on a small
test set than either R@1), then the two R@1 the paper reports."""


def headline_metrics(unit: str) -> tuple[str, ...]:
    return HEADLINE.get(unit, RETRIEVAL_HEADLINE)


def display(unit: str, metric: str, value: float | None) -> float | None:
    return None if value is None else value * DISPLAY_SCALE.get((unit, metric), 1.0)


@dataclass(frozen=True)
class Axis:
    """One spoke of the radar: a unit's metric, from its trivial baseline (centre) to the paper's number (rim)."""

    label: str
    unit: str
    metric: str
    baseline: float
    """The trivial baseline on the real benchmark, in the published scale (chance, majority, prior)."""

    @property
    def paper(self) -> float:
        return REFERENCE[(self.unit, self.metric)]["giant (paper)"]


# Baselines: ImageNet chance 1/1000; ADE20K, detection, caption CIDEr ~0 for a constant prediction; retrieval R@1
# chance = 1 / number of test images (1,000 Flickr30K, 5,000 COCO); VQAv2 always answering "yes" scores ~26 on
# test-dev; NLVR2 majority class ~50.
PAPER_AXES = (
    Axis("ADE20K\nmIoU", "ade20k", "mIoU", 0.0),
    Axis("ImageNet\ntop-1", "imagenet", "acc1", 0.1),
    Axis("COCO det\nbox AP", "coco_detection", "bbox_AP", 0.0),
    Axis("COCO FT\nTR@1", "coco_retrieval", "tr_r1", 0.02),
    Axis("COCO FT\nIR@1", "coco_retrieval", "ir_r1", 0.02),
    Axis("Flickr30K FT\nTR@1", "flickr30k_retrieval", "tr_r1", 0.1),
    Axis("Flickr30K FT\nIR@1", "flickr30k_retrieval", "ir_r1", 0.1),
    Axis("Flickr30K ZS\nTR@1", "flickr30k_zeroshot", "tr_r1", 0.1),
    Axis("Flickr30K ZS\nIR@1", "flickr30k_zeroshot", "ir_r1", 0.1),
    Axis("VQAv2\naccuracy", "vqav2", "overall", 26.0),
    Axis("COCO caption\nCIDEr", "coco_captioning", "CIDEr", 0.0),
    Axis("NLVR2\naccuracy", "nlvr2", "accuracy", 50.0),
)


def axis_baseline(axis: Axis, metrics: dict[str, float] | None) -> float:
    """The axis's centre for one run: retrieval chance from the run's own test size when it was logged."""
    if metrics and axis.metric in ("tr_r1", "ir_r1") and metrics.get("num_images"):
        return 100.0 / metrics["num_images"]
    return axis.baseline
