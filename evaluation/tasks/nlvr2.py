"""NLVR2 visual reasoning: is a sentence true of a pair of images (`BEiT3ForVisualReasoning`)?

BEiT-3 (arXiv 2208.10442), NLVR2 (Suhr et al., ACL 2019). Checked against microsoft/unilm `beit3/datasets.py`
(`NLVR2Dataset.make_dataset_index`), `modeling_finetune.py` and lil-lab/nlvr `nlvr2/eval/metrics.py`.

Layout under `root` (lil-lab/nlvr repo plus the images): `nlvr2/data/{train,dev,test1,test2}.json` (JSON Lines
with `identifier` "split-setid-pairid-sentenceid", `sentence`, `label` "True"/"False", train lines also
`directory`); images `images/train/<directory>/<identifier minus last field>-img{0,1}.png`, `dev/...`,
`test1/...`, `test2/...` (some ".png" files hold JPEG bytes; images are decoded by content).
Splits: train, val (= dev), test (= test-P, `test1.json`), test-U (`test2.json`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.model import trunc_normal_one_sigma_
from evaluation.baselines import baseline_result, binomial_stderr, majority_label
from evaluation.metrics.classification import nlvr2_scores
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.data import check_split, read_jsonl, text_segment, vl_image

SPLITS = {"train": "train", "val": "dev", "dev": "dev", "test": "test1", "test-P": "test1", "test-U": "test2"}
IMAGE_PREFIXES = {"train": "images/train", "dev": "dev", "test1": "test1", "test2": "test2"}
HEAD_INIT_SCALE = 1e-3
"""The release scales the head's initial weights by 0.001 (`BEiT3ForVisualReasoning`); `head_init_scale` sets it."""

_COMMON = dict(img_size=224, epochs=20, warmup_epochs=5, batch_size=256, weight_decay=0.2, drop_path=0.2)
_COMMON |= dict(randaug=False, text_len=64, min_lr=1e-6)
RECIPES = {"base": _COMMON | dict(lr=7e-4, layer_decay=0.65), "large": _COMMON | dict(lr=3e-4, layer_decay=0.85)}


class TwoLayerMLP(nn.Module):
    """LayerNorm -> Linear(4D, 2D) -> LayerNorm -> GELU -> Linear(2D, 2), released names."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.dense1 = nn.Linear(in_dim, hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.act = nn.GELU()
        self.dense2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.act(self.norm2(self.dense1(self.norm1(x)))))


class VisualReasoningModel(nn.Module):
    """Both (image, sentence) pairs in one 2B forward; [vCLS_a, tCLS_a, vCLS_b, tCLS_b] -> `head`."""

    def __init__(self, beit3: beit3_core.BEiT3, num_classes: int = 2, init_scale: float = HEAD_INIT_SCALE):
        super().__init__()
        dim = beit3.config.embed_dim
        self.beit3 = beit3
        self.head = TwoLayerMLP(dim * 4, dim * 2, num_classes)
        with torch.no_grad():
            for dense in (self.head.dense1, self.head.dense2):
                trunc_normal_one_sigma_(dense.weight, std=0.02)
                nn.init.zeros_(dense.bias)
                dense.weight.mul_(init_scale)
                dense.bias.mul_(init_scale)

    def forward(
        self, image: torch.Tensor, image2: torch.Tensor, text: torch.Tensor, text_padding_mask: torch.Tensor
    ) -> torch.Tensor:
        batch_size = image.shape[0]
        x_2BND = self.beit3(
            image=torch.cat([image, image2]),
            text=torch.cat([text, text]),
            text_padding_mask=torch.cat([text_padding_mask, text_padding_mask]),
        )
        split = self.beit3.num_patches + 1  # position of the text <s>
        cls_2B2D = torch.cat([x_2BND[:, 0], x_2BND[:, split]], dim=-1)
        pair_B4D = torch.cat([cls_2B2D[:batch_size], cls_2B2D[batch_size:]], dim=-1)
        return self.head(pair_B4D)  # [B, 2]


class NLVR2Dataset(Dataset):
    def __init__(self, root: str | Path, split: str, tokenizer: Any, img_size: int, text_len: int = 64):
        check_split(split, SPLITS)
        self.root, self.split, self.tokenizer = Path(root), split, tokenizer
        self.img_size, self.text_len = img_size, text_len
        name = SPLITS[split]
        self.items = []
        for line in read_jsonl(self.root / "nlvr2" / "data" / f"{name}.json"):
            folder = IMAGE_PREFIXES[name] + (f"/{line['directory']}" if "directory" in line else "")
            stem = "-".join(line["identifier"].split("-")[:-1])  # drop the sentence id
            self.items.append(
                {
                    "identifier": line["identifier"],
                    "sentence": line["sentence"],
                    "label": _truth(line["label"]),
                    "image_path": f"{folder}/{stem}-img0.png",
                    "image2_path": f"{folder}/{stem}-img1.png",
                }
            )

    @property
    def labels(self) -> dict[str, bool]:
        return {item["identifier"]: item["label"] for item in self.items}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        train = self.split == "train"
        text, padding = text_segment(self.tokenizer, item["sentence"], self.text_len)
        return {
            "image": vl_image(self.root / item["image_path"], self.img_size, train),
            "image2": vl_image(self.root / item["image2_path"], self.img_size, train),
            "text": text,
            "text_padding_mask": padding,
            "label": int(item["label"]),
            "identifier": item["identifier"],
        }


def _truth(label: str | bool) -> bool:
    if isinstance(label, bool):
        return label
    if label not in ("True", "False"):
        raise ValueError(f"NLVR2 label must be 'True' or 'False', got {label!r}")
    return label == "True"


class NLVR2Task(Task):
    name = "nlvr2"
    submission_suffix = ".csv"
    recipes = RECIPES
    selection_key = "accuracy"

    def build_model(
        self, backbone_name: str, head_init_scale: float = HEAD_INIT_SCALE, **overrides: Any
    ) -> VisualReasoningModel:
        backbone = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": True}))
        return VisualReasoningModel(backbone, init_scale=head_init_scale)

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> NLVR2Dataset:
        return NLVR2Dataset(root, split, tokenizer, img_size, **options)

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_B2 = model(batch["image"], batch["image2"], batch["text"], batch["text_padding_mask"])
        loss = F.cross_entropy(logits_B2, batch["label"])
        acc = (logits_B2.argmax(dim=-1) == batch["label"]).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": acc.detach() * 100}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        logits_B2 = model(batch["image"], batch["image2"], batch["text"], batch["text_padding_mask"])
        predicted = logits_B2.argmax(dim=-1).tolist()
        return [{"identifier": i, "prediction": bool(p)} for i, p in zip(batch["identifier"], predicted, strict=True)]

    def evaluate(self, records: Sequence[Record], dataset: NLVR2Dataset) -> dict[str, Any]:
        return nlvr2_scores({r["identifier"]: r["prediction"] for r in records}, dataset.labels)

    def baseline(self, train_set: NLVR2Dataset, eval_set: NLVR2Dataset) -> dict[str, Any]:
        """The training split's majority label for every example."""
        label = majority_label(train_set.labels.values())
        metrics = self.evaluate([{"identifier": i, "prediction": label} for i in eval_set.labels], eval_set)
        n = metrics["num_examples"]
        stderr = {"accuracy": binomial_stderr(metrics["accuracy"], n)}
        return baseline_result(f"majority label {label} of the training split", metrics, stderr, "binomial", n)

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: Dataset) -> Path:
        # The official scorer's CSV: "identifier,prediction" rows with True/False, no header.
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            for record in {r["identifier"]: r for r in records}.values():
                writer.writerow([record["identifier"], str(bool(record["prediction"]))])
        return path


register(NLVR2Task())
