"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr`."""

import math


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
