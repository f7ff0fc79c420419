"""COCO (Karpathy split) and NoCaps image captioning (`BEiT3ForCaptioning`).

BEiT-3 (arXiv 2208.10442). Checked against microsoft/unilm `beit3/modeling_finetune.py` (`BEiT3ForCaptioning`),
`datasets.py` (`CaptioningDataset`), `utils.py` (`BertCaptioningLoss`) and `engine_for_finetuning.py`.

Layout under `root`: `dataset_coco.json` with `train2014/`, `val2014/` (COCO); NoCaps adds
`nocaps_val_4500_captions.json` / `nocaps_test_image_info.json` with `val/`, `test/`. NoCaps has no training
set: its "train" split is COCO's (train + restval), so both live under one root, as in the release.

- Images: the vision-language transform of `evaluation.tasks.data`; the train split adds the release's
  RandomAugment(2, 7) when `randaug` (the recipe's default).
- Input: image tokens then text tokens under a causal mask (`captioning_attention_mask`).
- Training: each caption gets round(n * mask_prob) positions among 1..n-1 (n counts `<s>`/`</s>`, at least 1,
  at most n-1) replaced 80/10/10 by `<mask>` / themselves / a random id; the head predicts the originals.
  Through the causal mask a `<mask>` at j sees tokens < j, so this trains next-token prediction.
- Loss: KL to a label-smoothed target (1 - eps on the label, eps / (V - 1) elsewhere), summed over the
  vocabulary; after `drop_worst_after` steps the worst `drop_worst_ratio` of the batch's tokens are dropped.
- Decoding: beam search (3 beams, length penalty 0.6) feeding `<s> y_1 .. y_k <mask>` and reading the
  `<mask>` slot. Unlike the release, which caches keys/values between steps, every step re-runs the full
  image + text forward: exact (the release's cache reproduces the full forward) but O(L) times slower. Only
  the tokenizer's ids are decodable: rows of the embedding beyond `tokenizer.vocab_size` are never chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.model import trunc_normal_one_sigma_
from evaluation.baselines import baseline_result
from evaluation.baselines.captioning import cider_stderr, constant_caption
from evaluation.baselines.stats import bootstrap_method
from evaluation.metrics.captioning import caption_scores, nocaps_scores
from evaluation.tasks.augment import vl_random_augment
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.beam_search import beam_search
from evaluation.tasks.data import check_split, text_segment, vl_image, write_json
from evaluation.tasks.karpathy import read_karpathy, read_nocaps

_COMMON = dict(img_size=480, epochs=10, warmup_epochs=1, batch_size=256, layer_decay=1.0, weight_decay=0.05)
_COMMON |= dict(drop_path=0.1, randaug=True, text_len=32, mask_prob=0.7, drop_worst_after=12000)
_COMMON |= dict(drop_worst_ratio=0.2, label_smoothing=0.1, num_beams=3, length_penalty=0.6, min_lr=1e-6)
RELEASED_MASK_ID = 64001
RELEASED_TEXT_VOCAB = 64002
COCO_RECIPES = {"base": _COMMON | dict(lr=4e-5), "large": _COMMON | dict(lr=8e-6)}
NOCAPS_RECIPES = {"base": _COMMON | dict(lr=1e-5), "large": _COMMON | dict(lr=8e-6)}


def captioning_attention_mask(num_image_tokens: int, text_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Blocking mask [N, N], True = may NOT attend: image rows see images only; text row j sees images and text <= j."""
    size = num_image_tokens + text_len
    allowed = torch.zeros(size, size, dtype=torch.bool, device=device)
    allowed[:, :num_image_tokens] = True
    allowed[num_image_tokens:, num_image_tokens:] = torch.ones(
        text_len, text_len, dtype=torch.bool, device=device
    ).tril()
    return ~allowed


def mask_caption(ids_T: torch.Tensor, num_tokens: int, mask_prob: float, mask_id: int, vocab_size: int) -> torch.Tensor:
    """Chosen positions [T] bool; replaces them in `ids_T` in place (80% `<mask>`, 10% kept, 10% random id)."""
    num_masked = min(max(int(num_tokens * mask_prob + 0.5), 1), num_tokens - 1)
    chosen = 1 + torch.randperm(num_tokens - 1)[:num_masked]  # never position 0 (<s>); </s> may be chosen
    masked_T = torch.zeros_like(ids_T, dtype=torch.bool)
    masked_T[chosen] = True
    coin = torch.rand(num_masked)
    random_ids = torch.randint(3, vocab_size, (num_masked,))  # [3, vocab_size - 1], may hit <mask> itself
    ids_T[chosen] = torch.where(coin < 0.8, mask_id, torch.where(coin < 0.9, ids_T[chosen], random_ids))
    return masked_T


class CaptioningModel(nn.Module):
    """Image + causal text encoder -> `mlm_head` over the text vocabulary."""

    def __init__(self, beit3: beit3_core.BEiT3):
        super().__init__()
        self.beit3 = beit3
        self.mlm_head = nn.Linear(beit3.config.embed_dim, beit3.config.vocab_size)
        trunc_normal_one_sigma_(self.mlm_head.weight, std=0.02)
        nn.init.zeros_(self.mlm_head.bias)

    def encode_text(
        self, image: torch.Tensor, text: torch.Tensor, text_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text hidden states [B, T, D] under the captioning mask."""
        num_image_tokens = self.beit3.num_patches + 1
        mask_NN = captioning_attention_mask(num_image_tokens, text.shape[1], text.device)
        x_BND = self.beit3(image=image, text=text, text_padding_mask=text_padding_mask, attn_mask=mask_NN)
        return x_BND[:, num_image_tokens:]

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, text_padding_mask: torch.Tensor, masked_pos: torch.Tensor
    ) -> torch.Tensor:
        """Logits [M, V] at the M masked positions of the batch (row-major order)."""
        return self.mlm_head(self.encode_text(image, text, text_padding_mask)[masked_pos])

    def next_token_logprobs(self, image: torch.Tensor, prefix: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Log-probabilities [B, V] of the token after `prefix` [B, L], read at a trailing `<mask>`."""
        text = torch.cat([prefix, torch.full_like(prefix[:, :1], mask_id)], dim=1)
        return F.log_softmax(self.mlm_head(self.encode_text(image, text)[:, -1]).float(), dim=-1)


def captioning_loss(
    logits_MV: torch.Tensor, labels_M: torch.Tensor, eps: float, drop_worst_ratio: float = 0.0
) -> torch.Tensor:
    """Label-smoothed KL per token, optionally keeping the (1 - drop_worst_ratio) lowest losses; mean."""
    logprobs_MV = F.log_softmax(logits_MV.float(), dim=-1)
    num_classes = logits_MV.shape[-1]
    target_MV = torch.full_like(logprobs_MV, eps / (num_classes - 1))
    target_MV.scatter_(1, labels_M[:, None], 1 - eps)
    loss_M = F.kl_div(logprobs_MV, target_MV, reduction="none").sum(dim=-1)
    if drop_worst_ratio > 0:
        loss_M = loss_M.topk(int(loss_M.shape[0] * (1 - drop_worst_ratio)), largest=False).values
    return loss_M.mean()


class CaptioningDataset(Dataset):
    """Train: one item per caption (masked); val/test: one item per image, with references for scoring."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        tokenizer: Any,
        img_size: int,
        benchmark: str = "coco",
        text_len: int = 32,
        mask_prob: float = 0.7,
        randaug: bool = _COMMON["randaug"],
    ):
        check_split(split, ("train", "val", "test"))
        if not isinstance(randaug, bool):
            raise ValueError(f"captioning randaug is true or false (RandomAugment(2, 7)), got {randaug!r}")
        self.root, self.split, self.tokenizer, self.img_size = Path(root), split, tokenizer, img_size
        self.randaug = vl_random_augment() if randaug and split == "train" else None
        self.text_len, self.mask_prob, self.benchmark = text_len, mask_prob, benchmark
        if split == "train" or benchmark == "coco":
            self.images = read_karpathy(root, "coco", split)
        else:
            self.images = read_nocaps(root, split)
        if split == "train":
            self.items = [(image, caption) for image in self.images for caption in image.captions]
        else:
            self.items = [(image, None) for image in self.images]

    @property
    def references(self) -> dict[int, list[str]]:
        return {image.image_id: image.captions for image in self.images}

    @property
    def domains(self) -> dict[int, str]:
        return {image.image_id: image.domain for image in self.images if image.domain is not None}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, caption = self.items[index]
        item: dict[str, Any] = {
            "image": vl_image(self.root / image.image_path, self.img_size, self.split == "train", self.randaug),
            "image_id": image.image_id,
        }
        if caption is not None:
            labels_T, padding_T = text_segment(self.tokenizer, caption, self.text_len)
            text_T = labels_T.clone()
            num_tokens = int((~padding_T).sum())
            masked_T = mask_caption(
                text_T, num_tokens, self.mask_prob, self.tokenizer.mask_id, self.tokenizer.vocab_size
            )
            item |= {"text": text_T, "text_padding_mask": padding_T, "masked_pos": masked_T, "labels": labels_T}
        return item


class CaptioningTask(Task):
    selection_key = "CIDEr"
    dataset_augmentations = ("randaug",)
    pretrained_heads = ("mlm_head.",)  # the MDM text head predicts the masked caption tokens as in pretraining

    def __init__(self, name: str, benchmark: str, recipes: dict[str, dict[str, Any]], eval_split: str = "test"):
        self.name, self.benchmark, self.recipes, self.eval_split = name, benchmark, recipes, eval_split

    def build_model(self, backbone_name: str, **overrides: Any) -> CaptioningModel:
        return CaptioningModel(beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": True})))

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> CaptioningDataset:
        return CaptioningDataset(root, split, tokenizer, img_size, benchmark=self.benchmark, **options)

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_MV = model(batch["image"], batch["text"], batch["text_padding_mask"], batch["masked_pos"])
        labels_M = batch["labels"][batch["masked_pos"]]
        recipe = self.recipe()
        drop = recipe["drop_worst_ratio"] if step > recipe["drop_worst_after"] else 0.0
        loss = captioning_loss(logits_MV, labels_M, recipe["label_smoothing"], drop)
        acc = (logits_MV.argmax(dim=-1) == labels_M).float().mean()
        return loss, {"loss": loss.detach(), "mlm_acc": acc.detach()}

    @torch.no_grad()
    def predict(
        self, model: nn.Module, batch: Batch, tokenizer: Any | None = None, max_len: int | None = None
    ) -> list[Record]:
        """Beam-search token ids per image.

        `tokenizer` gives the `<mask>` id and the decodable vocabulary; the default is the released `beit3.spm`
        layout (64,000 pieces: `<mask>` = 64001, 64,002 ids).
        """
        image = batch["image"]
        num_beams = self.recipe()["num_beams"]
        mask_id = tokenizer.mask_id if tokenizer is not None else RELEASED_MASK_ID
        vocab = tokenizer.vocab_size if tokenizer is not None else RELEASED_TEXT_VOCAB
        image_beams = image.repeat_interleave(num_beams, dim=0)  # [B*K, 3, S, S]: rows b*K..b*K+K-1 = image b

        def next_logprobs(prefix: torch.Tensor) -> torch.Tensor:
            return model.next_token_logprobs(image_beams, prefix, mask_id)[:, :vocab]

        sequences = beam_search(
            next_logprobs,
            image.shape[0],
            bos_id=0,
            eos_id=2,
            pad_id=1,
            num_beams=num_beams,
            max_len=max_len or self.recipe()["text_len"],
            length_penalty=self.recipe()["length_penalty"],
            device=image.device,
        )
        return [{"image_id": i, "token_ids": s} for i, s in zip(batch["image_id"].tolist(), sequences, strict=True)]

    def captions(self, records: Sequence[Record], dataset: CaptioningDataset) -> dict[int, str]:
        """Image id -> decoded caption (special tokens skipped), one per image."""
        return {r["image_id"]: dataset.tokenizer.decode(r["token_ids"], skip_special=True) for r in records}

    def evaluate(self, records: Sequence[Record], dataset: CaptioningDataset) -> dict[str, Any]:
        predictions = self.captions(records, dataset)
        if self.benchmark == "nocaps":
            return nocaps_scores(dataset.references, predictions, dataset.domains)
        return caption_scores(dataset.references, predictions)

    def baseline(self, train_set: CaptioningDataset, eval_set: CaptioningDataset) -> dict[str, Any]:
        """One training caption for every image (`evaluation.baselines.captioning.constant_caption`)."""
        caption = constant_caption(train_set.references)
        predictions = dict.fromkeys(eval_set.references, caption)
        if self.benchmark == "nocaps":
            metrics = nocaps_scores(eval_set.references, predictions, eval_set.domains)
        else:
            metrics = caption_scores(eval_set.references, predictions)
        stderr = {"CIDEr": cider_stderr(eval_set.references, caption)}
        predictor = f"constant caption {caption!r} (best training CIDEr of the frequent training captions)"
        return baseline_result(predictor, metrics, stderr, bootstrap_method(), len(predictions))

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: CaptioningDataset) -> Path:
        captions = self.captions(records, dataset)
        return write_json([{"image_id": i, "caption": c} for i, c in captions.items()], path)


register(CaptioningTask("coco_captioning", "coco", COCO_RECIPES))
# NoCaps test captions are held by the evaluation server: local scores come from val.
register(CaptioningTask("nocaps", "nocaps", NOCAPS_RECIPES, eval_split="val"))
