"""Dense vision on BEiT-3: block features at any input size, feature pyramids, and the dense task models.

    from evaluation.dense import DenseBackbone, DenseConfig, build_dense_backbone

    backbone = build_dense_backbone("beit3_base_patch16_224", DenseConfig(pyramid="vitdet", extra_pool_level=True))
    levels = backbone(images)      # images [B, 3, H, W], H and W multiples of 32 (of 64 with p6)
    levels["p2"]                   # [B, C, H/4, W/4]; "p3" H/8, "p4" H/16, "p5" H/32, "p6" H/64
    backbone.channels              # {"p2": C, ...}: 256 for "vitdet", the embed dim for "beit2"
    backbone.strides               # {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}

- `DenseConfig.pyramid`: "beit2" (default; BEiT v2's deconv/pool pyramid over four blocks, the ADE20K reference)
  or "vitdet" (ViTDet's simple feature pyramid over the last block, the COCO reference).
- Blocks read: base [3, 5, 7, 11], large [7, 11, 15, 23], other depths the same fractions
  (`default_out_indices`); `DenseConfig.out_indices` overrides.
- Position embeddings are resized to the input's patch grid on every forward, so the stored table keeps its
  pretraining shape and checkpoints load strictly at any input size.
- Task models subclass `DenseBackbone` (backbone at `model.beit3`, pyramid at `model.pyramid`, heads beside
  them); `evaluation.tasks.layer_decay_groups(model, lr, decay, weight_decay)` then gives the release's
  layer-wise LR decay, with the pyramid and heads in the top group.
"""

from evaluation.dense.backbone import DenseBackbone, build_dense_backbone, dense_config
from evaluation.dense.features import block_feature_maps, default_out_indices, pad_to_multiple, vision_positions
from evaluation.dense.pyramid import LEVELS, STRIDES, DenseConfig

__all__ = [
    "LEVELS",
    "STRIDES",
    "DenseBackbone",
    "DenseConfig",
    "block_feature_maps",
    "build_dense_backbone",
    "default_out_indices",
    "dense_config",
    "pad_to_multiple",
    "vision_positions",
]
