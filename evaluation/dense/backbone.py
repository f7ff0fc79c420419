"""`DenseBackbone`: the BEiT-3 vision path plus a feature pyramid, the base of the dense task models.

Task models (segmentation, detection) subclass `DenseBackbone` and add their heads, so the backbone sits at
`model.beit3` with its parameters under `beit3.*`: the fine-tuning machinery (`evaluation.finetune.weights`)
loads pretrained and released weights into `model.beit3`, and `evaluation.tasks.base.layer_decay_groups`
gives the backbone the release's layer-wise LR decay (embeddings 0, block i -> i + 1, pyramid and heads L + 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

import beit3_core
from evaluation.dense.features import block_feature_maps
from evaluation.dense.pyramid import STRIDES, DenseConfig, build_pyramid


class DenseBackbone(nn.Module):
    """image [B, 3, H, W] (H, W multiples of 16) -> {"p2": [B, C, H/4, W/4], ..., "p5": [B, C, H/32, W/32]}.

    H and W must be multiples of 32 for p5 (and of 64 for the optional p6) to have exactly that size; the
    maps are floor-divided otherwise.
    """

    def __init__(self, beit3: beit3_core.BEiT3, dense: DenseConfig):
        super().__init__()
        if beit3.config.normalize_output:
            raise ValueError("dense features read block outputs: build the backbone with normalize_output=False")
        self.beit3 = beit3
        self.dense = dense
        self.out_indices = dense.resolved_out_indices(beit3.config.num_layers)
        self.global_blocks = dense.resolved_global_blocks(beit3.config.num_layers)
        self.pyramid = build_pyramid(dense, beit3.config.embed_dim)

    @property
    def channels(self) -> dict[str, int]:
        """Channels per output level."""
        return self.dense.channels(self.beit3.config.embed_dim)

    @property
    def strides(self) -> dict[str, int]:
        """Stride per output level (4, 8, 16, 32, and 64 for p6)."""
        return {name: STRIDES[name] for name in self.channels}

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = block_feature_maps(self.beit3, image, self.out_indices, self.dense.window_size, self.global_blocks)
        return self.pyramid(maps)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features(image)


def dense_config(options: DenseConfig | dict[str, Any] | None) -> DenseConfig:
    """A `DenseConfig` from a config object, a dict of its fields (YAML `head_options`), or None (defaults)."""
    if isinstance(options, DenseConfig):
        return options
    options = dict(options or {})
    unknown = set(options) - {f.name for f in dataclasses.fields(DenseConfig)}
    if unknown:
        raise ValueError(f"unknown dense options {sorted(unknown)}")
    return DenseConfig(**options)


def build_dense_backbone(
    backbone_name: str, dense: DenseConfig | dict[str, Any] | None = None, **overrides: Any
) -> DenseBackbone:
    """The named BEiT-3 size (`beit3_core.list_models()`) with `overrides`, no final norm, and a pyramid."""
    beit3 = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": False}))
    return DenseBackbone(beit3, dense_config(dense))
