"""The two-stage detector for COCO boxes and masks (ViTDet's Mask R-CNN) on the BEiT-3 feature pyramid."""

from evaluation.dense.detection.detector import DetectorConfig, MaskRCNN, paste_masks
from evaluation.dense.detection.roi_heads import ROIHeadsConfig
from evaluation.dense.detection.rpn import RPNConfig

__all__ = ["DetectorConfig", "MaskRCNN", "ROIHeadsConfig", "RPNConfig", "paste_masks"]
