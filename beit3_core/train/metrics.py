"""What one pretraining step computes, for the runtime meter's throughput: matmul FLOPs (TFLOP/s and MFU on
GPUs) and tokens."""

import torch.distributed as dist

from beit3_core.config import BEiT3Config
from beit3_core.mdm import MDMBatch


def _encoder_flops(config: BEiT3Config, batch_size: int, tokens: int) -> float:
    dim, ffn = config.embed_dim, config.ffn_dim
    per_layer = 2 * tokens * (4 * dim * dim + 2 * dim * ffn) + 4 * tokens * tokens * dim
    return batch_size * config.num_layers * per_layer


def itc_step_flops(config: BEiT3Config, batch: MDMBatch) -> float:
    """Matmul FLOPs of one ITC step (3x forward): separate image and text passes, the two projections and the
    local x global similarity matrices (the batch of every rank is the same size)."""
    s, dim = batch.pair, config.embed_dim
    world = dist.get_world_size() if dist.is_initialized() else 1
    total = _encoder_flops(config, s.batch_size, 1 + config.num_patches) + _encoder_flops(
        config, s.batch_size, s.text.shape[1]
    )
    total += 2 * (2 * s.batch_size * dim * dim) + 2 * (2 * s.batch_size * world * s.batch_size * dim)
    return 3 * total


def step_flops(config: BEiT3Config, batch: MDMBatch) -> float:
    """Matmul FLOPs of one MDM training step (3x forward): projections, FFN, attention and the MDM heads."""
    dim = config.embed_dim
    total = 0.0
    for stream in batch.streams():
        if stream is None:
            continue
        tokens = (1 + config.num_patches if hasattr(stream, "image") else 0) + (
            stream.text.shape[1] if hasattr(stream, "text") else 0
        )
        total += _encoder_flops(config, stream.batch_size, tokens)
        if hasattr(stream, "image_mask"):
            total += 2 * stream.image_mask.shape[0] * stream.image_mask.shape[1] * 0.4 * dim * config.visual_vocab_size
        if hasattr(stream, "text_labels"):
            total += 2 * stream.text_labels.numel() * 0.3 * dim * config.vocab_size
    return 3 * total


def num_tokens(batch: MDMBatch, config: BEiT3Config) -> int:
    total = 0
    for stream in batch.streams():
        if stream is None:
            continue
        if hasattr(stream, "image"):
            total += stream.batch_size * (1 + config.num_patches)
        if hasattr(stream, "text_padding_mask"):
            total += int(stream.text_padding_mask.numel())
    return total
