"""Multiway routing: one copy of a per-token module per modality expert.

Experts are named as in the released checkpoints: "A" = vision, "B" = language; the paper's
vision-language FFN expert is "C". A sequence is carried through the encoder as a list of contiguous
segments, each with its expert, so a module is applied once per segment instead of splitting and
concatenating the residual stream at every call (torchscale's `MultiwayNetwork` splits by position; the
result is the same).
"""

from collections.abc import Callable

import torch
from torch import nn

VISION = "A"
LANGUAGE = "B"
VISION_LANGUAGE = "C"


class Multiway(nn.Module):
    """Holds `make()` once per expert as submodules named by the expert letters."""

    def __init__(self, make: Callable[[], nn.Module], experts: tuple[str, ...] = (VISION, LANGUAGE)):
        super().__init__()
        for name in experts:
            self.add_module(name, make())

    def forward(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        return self.get_submodule(expert)(x)


def route(module: nn.Module, expert: str) -> nn.Module:
    """The copy of `module` that serves `expert`; a shared (non-multiway) module serves every expert."""
    return module.get_submodule(expert) if isinstance(module, Multiway) else module


def maybe_multiway(make: Callable[[], nn.Module], multiway: bool, experts: tuple[str, ...] = (VISION, LANGUAGE)):
    return Multiway(make, experts) if multiway else make()
