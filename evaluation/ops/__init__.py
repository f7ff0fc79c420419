"""Detection ops in plain torch: RoIAlign and (batched) non-maximum suppression.

torchvision's compiled ops do not load beside the project's CPU torch wheel, so the two ops the detector needs
are written here with torchvision's semantics and tested against brute-force loops.
"""

from evaluation.ops.nms import batched_nms, box_iou, nms
from evaluation.ops.roi_align import roi_align

__all__ = ["batched_nms", "box_iou", "nms", "roi_align"]
