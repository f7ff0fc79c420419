"""Masked data modeling (MDM): BEiT-3's single pretraining task.

One shared backbone predicts visual tokens (from a VQ-KD tokenizer) at masked image patches and text token ids
at masked text positions, for images alone, texts alone and image-text pairs. Separate linear heads, named as
in the released pretrained checkpoints: `mim_head` (D -> visual vocabulary) and `mlm_head` (D -> text
vocabulary). Loss = weighted sum of one cross-entropy per stream kind, each a mean over its own masked
positions (paper: equal weights; the paper does not publish weights, so they are configurable).

Legend: B batch, P patches, T text tokens, M masked positions in the batch, D embed dim, V vocabulary.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from beit3_core.config import BEiT3Config
from beit3_core.masking import IGNORE_INDEX
from beit3_core.model import BEiT3, no_weight_decay_parameters, trunc_normal_one_sigma_

STREAM_KINDS = ("image", "text", "pair_image", "pair_text")


class _Stream:
    def to(self, device: torch.device | str, non_blocking: bool = False):
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        return type(self)(**moved)

    @property
    def batch_size(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]


@dataclass
class ImageStream(_Stream):
    image: torch.Tensor
    """[B, C, H, W] model view."""
    image_mask: torch.Tensor
    """[B, P] bool, True = masked patch."""
    visual_tokens: torch.Tensor
    """[B, P] int64 tokenizer codes of the unmasked view; only the masked ones are targets."""


@dataclass
class TextStream(_Stream):
    text: torch.Tensor
    """[B, T] int64 ids after masking (80/10/10 replacement)."""
    text_padding_mask: torch.Tensor
    """[B, T] bool, True = padding."""
    text_labels: torch.Tensor
    """[B, T] int64 original ids at masked positions, IGNORE_INDEX elsewhere."""


@dataclass
class PairStream(_Stream):
    image: torch.Tensor
    image_mask: torch.Tensor
    visual_tokens: torch.Tensor
    text: torch.Tensor
    text_padding_mask: torch.Tensor
    text_labels: torch.Tensor


@dataclass
class MDMBatch:
    """One MDM step: any mix of images, texts and image-text pairs (the paper uses equal thirds)."""

    image: ImageStream | None = None
    text: TextStream | None = None
    pair: PairStream | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MDMBatch":
        return MDMBatch(*(s.to(device, non_blocking) if s is not None else None for s in self.streams()))

    def streams(self) -> tuple:
        return (self.image, self.text, self.pair)

    def num_samples(self) -> dict[str, int]:
        kinds = ("image", "text", "pair")
        return {kind: s.batch_size for kind, s in zip(kinds, self.streams(), strict=True) if s is not None}


class BEiT3ForMDM(nn.Module):
    """Backbone + `mim_head` + `mlm_head`; state dict keys match the released pretrained checkpoints."""

    def __init__(self, config: BEiT3Config, loss_weights: dict[str, float] | None = None):
        super().__init__()
        if not config.normalize_output:
            raise ValueError("MDM pretraining predicts from the final-LN output; build with normalize_output=True")
        unknown = set(loss_weights or {}) - set(STREAM_KINDS)
        if unknown:
            raise ValueError(f"unknown MDM loss weight keys {sorted(unknown)}; known: {STREAM_KINDS}")
        self.config = config
        self.loss_weights = {kind: 1.0 for kind in STREAM_KINDS} | (loss_weights or {})
        self.beit3 = BEiT3(config)
        self.mim_head = nn.Linear(config.embed_dim, config.visual_vocab_size)
        self.mlm_head = nn.Linear(config.embed_dim, config.vocab_size)
        for head in (self.mim_head, self.mlm_head):
            trunc_normal_one_sigma_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def forward(self, batch: MDMBatch) -> dict[str, torch.Tensor]:
        """Loss and per-kind metrics for one mixed batch.

        Returns:
            `loss` (scalar to backpropagate) and, for each stream kind present, detached `loss/<kind>`,
            `accuracy/<kind>` (argmax == target over masked positions) and `num_masked/<kind>`.
        """
        num_patches = self.beit3.num_patches
        terms: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if batch.image is not None:
            s = batch.image
            hidden = self.beit3(image=s.image, image_mask=s.image_mask)[:, 1:]  # drop CLS -> [B, P, D]
            terms["image"] = self._vision_term(hidden, s.image_mask, s.visual_tokens)
        if batch.text is not None:
            s = batch.text
            hidden = self.beit3(text=s.text, text_padding_mask=s.text_padding_mask)  # [B, T, D]
            terms["text"] = self._text_term(hidden, s.text_labels)
        if batch.pair is not None:
            s = batch.pair
            hidden = self.beit3(
                image=s.image, text=s.text, text_padding_mask=s.text_padding_mask, image_mask=s.image_mask
            )  # [B, 1 + P + T, D]
            terms["pair_image"] = self._vision_term(hidden[:, 1 : 1 + num_patches], s.image_mask, s.visual_tokens)
            terms["pair_text"] = self._text_term(hidden[:, 1 + num_patches :], s.text_labels)
        if not terms:
            raise ValueError("MDMBatch holds no stream")

        out = {}
        loss = 0.0
        for kind, (term_loss, correct, count) in terms.items():
            loss = loss + self.loss_weights[kind] * term_loss
            out[f"loss/{kind}"] = term_loss.detach()
            out[f"accuracy/{kind}"] = correct / count.clamp(min=1)
            out[f"num_masked/{kind}"] = count
        out["loss"] = loss
        return out

    def _vision_term(self, hidden: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor):
        if tokens.shape != mask.shape:
            raise ValueError(f"visual_tokens shape {tuple(tokens.shape)} != image_mask shape {tuple(mask.shape)}")
        return self._masked_cross_entropy(self.mim_head, hidden[mask], tokens[mask])  # [M, D], [M]

    def _text_term(self, hidden: torch.Tensor, labels: torch.Tensor):
        if labels.shape != hidden.shape[:2]:
            raise ValueError(f"text_labels shape {tuple(labels.shape)} != text shape {tuple(hidden.shape[:2])}")
        masked = labels != IGNORE_INDEX
        return self._masked_cross_entropy(self.mlm_head, hidden[masked], labels[masked])

    @staticmethod
    def _masked_cross_entropy(head: nn.Linear, hidden: torch.Tensor, target: torch.Tensor):
        """Mean CE over the M gathered positions (in fp32), number correct and M; safe when M == 0."""
        logits = head(hidden).float()  # [M, V]; the head only ever sees masked positions
        count = torch.tensor(target.numel(), device=logits.device, dtype=torch.float32)
        loss = F.cross_entropy(logits, target, reduction="sum") / count.clamp(min=1)
        correct = (logits.detach().argmax(-1) == target).sum().float()
        return loss, correct, count

    def no_weight_decay_parameters(self) -> set[str]:
        return no_weight_decay_parameters(self)
