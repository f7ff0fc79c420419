"""COCO and Flickr30K image-text retrieval with the dual encoder (`BEiT3ForRetrieval`).

BEiT-3 (arXiv 2208.10442). Checked against microsoft/unilm `beit3/modeling_finetune.py` (`BEiT3ForRetrieval`),
`utils.py` (`ClipLoss`, `GatherLayer`), `datasets.py` (`RetrievalDataset`) and `engine_for_finetuning.py`
(`RetrievalHandler`).

Layout under `root`: `dataset_coco.json` + `train2014/`, `val2014/`; or `dataset_flickr30k.json` +
`flickr30k-images/`. Items are one per caption (train = train + restval); `image_index` is the running index
of the image within the split. Zero-shot retrieval is the same task evaluated at 224 px from an ITC checkpoint
without training.

- Model: image-only forward -> vision CLS -> `vision_head` (no bias) -> L2 norm; text-only forward -> `<s>` ->
  `language_head` (no bias) -> L2 norm; `logit_scale` starts at log(1/0.07) and is not clamped.
- Loss: symmetric InfoNCE, (CE(image->text) + CE(text->image)) / 2 over logits exp(logit_scale) * cosine. When
  torch.distributed is initialised, features of all ranks are gathered with gradient (global negatives).
- Metrics: TR@1/5/10 and IR@1/5/10 over unique images x all captions (`retrieval_recall`); the "submission"
  is that score JSON, as the release writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.itc import BEiT3ForITC, contrastive_loss
from evaluation.baselines.retrieval import random_ranking_recall
from evaluation.metrics.retrieval import retrieval_recall
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.data import text_segment, vl_image, write_json
from evaluation.tasks.karpathy import read_karpathy

_COMMON = dict(img_size=384, batch_size=3072, weight_decay=0.05, drop_path=0.2, randaug=False, text_len=64)
_COMMON |= dict(min_lr=1e-6, init="itc")
COCO_RECIPES = {
    "base": _COMMON | dict(lr=2e-4, epochs=15, warmup_epochs=3, layer_decay=0.65),
    "large": _COMMON | dict(lr=5e-5, epochs=15, warmup_epochs=3, layer_decay=0.85),
}
# The release states no large Flickr30K learning rate; the COCO one is the documented fallback.
FLICKR_RECIPES = {
    "base": _COMMON | dict(lr=1e-4, epochs=20, warmup_epochs=5, layer_decay=0.65),
    "large": _COMMON | dict(lr=5e-5, epochs=20, warmup_epochs=5, layer_decay=0.85),
}


class RetrievalModel(BEiT3ForITC):
    """The ITC dual encoder (`beit3_core.itc`) over a given backbone; `forward` returns both feature sets."""

    def __init__(self, beit3: beit3_core.BEiT3):
        super().__init__(beit3.config, backbone=beit3)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, text_padding_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image), self.encode_text(text, text_padding_mask)


class RetrievalDataset(Dataset):
    def __init__(self, root: str | Path, split: str, tokenizer: Any, img_size: int, benchmark: str, text_len: int = 64):
        self.root, self.split, self.tokenizer = Path(root), split, tokenizer
        self.img_size, self.text_len = img_size, text_len
        self.images = read_karpathy(root, benchmark, split)
        # One (image_index, caption) per caption; image_index runs over the split's images.
        self.items = [(index, caption) for index, image in enumerate(self.images) for caption in image.captions]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, caption = self.items[index]
        text, padding = text_segment(self.tokenizer, caption, self.text_len)
        image = vl_image(self.root / self.images[image_index].image_path, self.img_size, self.split == "train")
        item = {"image": image, "text": text, "text_padding_mask": padding}
        return item | {"image_index": image_index, "text_index": index}


class RetrievalTask(Task):
    selection_key = "average_score"
    # The released recipe fine-tunes the ITC checkpoint (`beit3_*_itc_patch16_224.pth`) with its projections and
    # logit scale; an MDM checkpoint has none, so these stay at their initialisation.
    pretrained_heads = ("vision_head.", "language_head.", "logit_scale")

    def __init__(self, name: str, benchmark: str, recipes: dict[str, dict[str, Any]]):
        self.name, self.benchmark, self.recipes = name, benchmark, recipes

    def build_model(self, backbone_name: str, **overrides: Any) -> RetrievalModel:
        return RetrievalModel(beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": True})))

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> RetrievalDataset:
        return RetrievalDataset(root, split, tokenizer, img_size, self.benchmark, **options)

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_BD, text_BD = model(batch["image"], batch["text"], batch["text_padding_mask"])
        loss, _ = contrastive_loss(image_BD, text_BD, model.logit_scale)
        return loss, {"loss": loss.detach(), "logit_scale": model.logit_scale.detach().exp()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        """Per caption: its features and its image's features (CPU tensors; images de-duplicated later)."""
        image_BD, text_BD = model(batch["image"], batch["text"], batch["text_padding_mask"])
        return [
            {"image_index": int(i), "text_index": int(t), "image_feat": f.cpu(), "text_feat": g.cpu()}
            for i, t, f, g in zip(batch["image_index"], batch["text_index"], image_BD, text_BD, strict=True)
        ]

    def evaluate(self, records: Sequence[Record], dataset: Dataset | None = None) -> dict[str, Any]:
        images: dict[int, torch.Tensor] = {}
        for r in records:  # the first feature seen per image wins (later ones come from its other captions)
            images.setdefault(r["image_index"], r["image_feat"])
        texts = {r["text_index"]: r for r in records}  # padded samplers repeat captions
        image_ids = sorted(images)
        row_of = {image_id: row for row, image_id in enumerate(image_ids)}
        image_ID = torch.stack([images[i] for i in image_ids]).float()
        text_TD = torch.stack([texts[t]["text_feat"] for t in sorted(texts)]).float()
        text_to_image = torch.tensor([row_of[texts[t]["image_index"]] for t in sorted(texts)])
        metrics = retrieval_recall(image_ID @ text_TD.T, text_to_image)
        return metrics | {"num_images": len(image_ids), "num_texts": len(texts)}

    def baseline(self, train_set: RetrievalDataset, eval_set: RetrievalDataset) -> dict[str, Any]:
        """A random ranking of the split, in closed form (`evaluation.baselines.retrieval`)."""
        return random_ranking_recall([len(image.captions) for image in eval_set.images])

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: Dataset | None = None) -> Path:
        return write_json(self.evaluate(records, dataset), path)


register(RetrievalTask("coco_retrieval", "coco", COCO_RECIPES))
register(RetrievalTask("flickr30k_retrieval", "flickr30k", FLICKR_RECIPES))
