"""Image-text contrastive (ITC) tuning: BEiT-3's dual encoder and its symmetric InfoNCE loss.

The step between MDM pretraining and zero-shot retrieval (the released `beit3_*_itc_patch16_224.pth` files).
Two independent passes through one backbone, no cross-attention between the modalities:

    image-only pass -> vision CLS -> vision_head (no bias)   -> L2 norm -> image features [B, D]
    text-only pass  -> <s>        -> language_head (no bias) -> L2 norm -> text features  [B, D]

logits = exp(logit_scale) * cosine, `logit_scale` initialised to ln(1/0.07) and never clamped; loss =
(CE(image -> text) + CE(text -> image)) / 2. Under torch.distributed the features of all ranks are gathered
with gradient (global negatives), so the mean of the per-rank losses equals the loss of one process over the
global batch, and so do the gradients after DDP's averaging.

State dict keys match the released ITC checkpoints: `beit3.*`, `vision_head.weight`, `language_head.weight`,
`logit_scale`.

Legend: B local batch, W world size, D embed dim.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from beit3_core.config import BEiT3Config
from beit3_core.mdm import MDMBatch
from beit3_core.model import BEiT3, no_weight_decay_parameters, trunc_normal_one_sigma_

LOGIT_SCALE_INIT = math.log(1 / 0.07)
ITC_HEAD_KEYS = ("vision_head.weight", "language_head.weight", "logit_scale")
ITC_METRICS = ("loss", "accuracy/i2t", "accuracy/t2i", "logit_scale")


class BEiT3ForITC(nn.Module):
    """Backbone + the two bias-free projections + the logit scale; `forward` takes the pair stream of a batch."""

    def __init__(self, config: BEiT3Config, backbone: BEiT3 | None = None):
        super().__init__()
        if not config.normalize_output:
            raise ValueError("the dual encoder projects the final-LN output; build with normalize_output=True")
        dim = config.embed_dim
        self.config = config
        self.beit3 = backbone if backbone is not None else BEiT3(config)
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        for head in (self.language_head, self.vision_head):
            trunc_normal_one_sigma_(head.weight, std=0.02)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_head(self.beit3(image=image)[:, 0]), dim=-1)  # [B, D]

    def encode_text(self, text: torch.Tensor, text_padding_mask: torch.Tensor) -> torch.Tensor:
        x_BTD = self.beit3(text=text, text_padding_mask=text_padding_mask)
        return F.normalize(self.language_head(x_BTD[:, 0]), dim=-1)  # [B, D]

    def forward(self, batch: MDMBatch) -> dict[str, torch.Tensor]:
        """Loss and detached metrics on the batch's image-text pairs (image masks and text labels unused)."""
        if batch.pair is None:
            raise ValueError("ITC trains on image-text pairs, but the batch holds none")
        s = batch.pair
        image_BD, text_BD = self.encode_image(s.image), self.encode_text(s.text, s.text_padding_mask)
        loss, logits_i2t, logits_t2i, labels_B = contrastive_logits_loss(image_BD, text_BD, self.logit_scale)
        return {
            "loss": loss,
            "accuracy/i2t": (logits_i2t.detach().argmax(-1) == labels_B).float().mean(),
            "accuracy/t2i": (logits_t2i.detach().argmax(-1) == labels_B).float().mean(),
            "logit_scale": self.logit_scale.detach().exp(),
        }

    def no_weight_decay_parameters(self) -> set[str]:
        return no_weight_decay_parameters(self)


def gather_with_grad(x_BD: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(features of every rank [W * B, D] in rank order, this rank); gradients flow back to the rank that made them.

    The backward of the autograd-aware gather sums each slice's gradient over the ranks and hands it to its
    owner (the release's GatherLayer does the same with an all-reduce). Every rank must pass the same B.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x_BD, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x_BD)), dist.get_rank()


def contrastive_logits_loss(
    image_BD: torch.Tensor, text_BD: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits image -> all texts [B, W*B], logits text -> all images [B, W*B], positive columns [B])."""
    all_images, rank = gather_with_grad(image_BD)
    all_texts, _ = gather_with_grad(text_BD)
    scale = logit_scale.exp()
    logits_i2t = scale * image_BD @ all_texts.T
    logits_t2i = scale * text_BD @ all_images.T
    labels_B = torch.arange(image_BD.shape[0], device=image_BD.device) + rank * image_BD.shape[0]
    loss = (F.cross_entropy(logits_i2t.float(), labels_B) + F.cross_entropy(logits_t2i.float(), labels_B)) / 2
    return loss, logits_i2t, logits_t2i, labels_B


def contrastive_loss(
    image_BD: torch.Tensor, text_BD: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE with global negatives when torch.distributed is running; returns (loss, i2t logits)."""
    loss, logits_i2t, _, _ = contrastive_logits_loss(image_BD, text_BD, logit_scale)
    return loss, logits_i2t
