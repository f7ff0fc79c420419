"""VQAv2 open-ended question answering as classification over an answer vocabulary (`BEiT3ForVisualQuestionAnswering`).

BEiT-3 (arXiv 2208.10442), VQAv2 (Goyal et al., CVPR 2017). Checked against microsoft/unilm `beit3/datasets.py`
(`VQAv2Dataset.make_dataset_index`), `glossary.py`, `modeling_finetune.py` and `engine_for_finetuning.py`.

Layout under `root` (the official names): `v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_
questions.json`, `v2_mscoco_{train2014,val2014}_annotations.json`, images `train2014/COCO_train2014_%012d.jpg`,
`val2014/...`, `test2015/...` (test-dev images are test2015 images).

- Answer vocabulary: every `multiple_choice_answer` of train + val, normalised like the official evaluation
  (punctuation, number words, articles, contractions; then commas dropped), kept when seen at least
  `min_answer_count` (9 -> the 3,129 released classes) times, in first-seen order.
- Targets: soft scores of the RAW human answers that are in the vocabulary (0.3/0.6/0.9/1.0 for 1/2/3/>=4).
- Splits (ViLT / BEiT-3): val images shuffled with `seed`; the first `rest_val_images` form "val", the rest are
  added to "train". Training questions without an in-vocabulary answer are dropped (as released); "val" keeps
  every question so the official accuracy covers the whole held-out set ("test", "test-dev" have no labels).
- Images: the vision-language transform of `evaluation.tasks.data`; the train split adds the release's
  RandomAugment(2, 7) when `randaug` (the recipe's default).
- Metrics: official VQA accuracy (`vqa_accuracy`) and the release's local `score` (mean soft target of the
  argmax answer, x100).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.model import trunc_normal_one_sigma_
from evaluation.baselines import baseline_result, bootstrap_stderr, most_frequent_answer
from evaluation.baselines.stats import bootstrap_method
from evaluation.metrics.vqa import (
    process_digit_article,
    process_punctuation,
    question_accuracy,
    soft_targets,
    vqa_accuracy,
)
from evaluation.tasks.augment import vl_random_augment
from evaluation.tasks.base import Batch, Record, Task, register
from evaluation.tasks.data import check_split, read_json, text_segment, vl_image, write_json

NUM_RELEASED_ANSWERS = 3129
SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}

_COMMON = dict(img_size=480, epochs=10, warmup_epochs=1, batch_size=128, layer_decay=1.0, task_head_lr_weight=20.0)
_COMMON |= dict(betas=(0.9, 0.98), weight_decay=0.01, randaug=True, text_len=64, min_lr=1e-6)
RECIPES = {"base": _COMMON | dict(lr=3e-5, drop_path=0.1), "large": _COMMON | dict(lr=2e-5, drop_path=0.15)}


def normalize_answer(answer: str) -> str:
    """`glossary.normalize_word`: the official prediction normalisation, then commas removed."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")


def questions_file(root: Path, subtype: str) -> Path:
    return root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"


def annotations_file(root: Path, subtype: str) -> Path:
    return root / f"v2_mscoco_{subtype}_annotations.json"


def image_path(subtype: str, image_id: int) -> str:
    folder = "test2015" if subtype.startswith("test") else subtype
    return f"{folder}/COCO_{folder}_{image_id:012d}.jpg"


def answer_vocabulary(root: str | Path, min_answer_count: int = 9) -> list[str]:
    """Normalised majority answers of train + val seen at least `min_answer_count` times, first-seen order."""
    counts: Counter[str] = Counter()
    for subtype in ("train2014", "val2014"):
        for ann in read_json(annotations_file(Path(root), subtype))["annotations"]:
            counts[normalize_answer(ann["multiple_choice_answer"])] += 1
    return [answer for answer, count in counts.items() if count >= min_answer_count]


class PoolerVQA(nn.Module):
    """LayerNorm -> Linear -> tanh on the vision CLS output (release `Pooler`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, cls_BD: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.norm(cls_BD)))


class VQAModel(nn.Module):
    """Fused image-question encoder (no final LN) -> `pooler` on position 0 -> `head` MLP over answers."""

    def __init__(self, beit3: beit3_core.BEiT3, num_answers: int):
        super().__init__()
        dim = beit3.config.embed_dim
        self.beit3 = beit3
        self.pooler = PoolerVQA(dim)
        self.head = nn.Sequential(
            nn.Linear(dim, dim * 2), nn.LayerNorm(dim * 2), nn.GELU(), nn.Linear(dim * 2, num_answers)
        )
        for module in (*self.pooler.modules(), *self.head.modules()):
            if isinstance(module, nn.Linear):
                trunc_normal_one_sigma_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_padding_mask: torch.Tensor) -> torch.Tensor:
        x_BND = self.beit3(image=image, text=text, text_padding_mask=text_padding_mask)
        return self.head(self.pooler(x_BND[:, 0]))  # [B, A]


class VQAv2Dataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        split: str,
        tokenizer: Any,
        img_size: int,
        *,
        min_answer_count: int = 9,
        rest_val_images: int = 1000,
        seed: int = 0,
        text_len: int = 64,
        answers: Sequence[str] | None = None,
        randaug: bool = RECIPES["base"]["randaug"],
    ):
        check_split(split, SUBTYPES)
        self.root, self.split, self.tokenizer = Path(root), split, tokenizer
        self.img_size, self.text_len = img_size, text_len
        if not isinstance(randaug, bool):
            raise ValueError(f"vqav2 randaug is true or false (RandomAugment(2, 7)), got {randaug!r}")
        self.randaug = vl_random_augment() if randaug and split == "train" else None
        self.answers = list(answers) if answers is not None else answer_vocabulary(root, min_answer_count)
        self.answer_to_label = {answer: label for label, answer in enumerate(self.answers)}
        self.annotations: dict[int, dict[str, Any]] = {}
        self.items: list[dict[str, Any]] = []
        if split == "train":
            rest_val = self._rest_val_images(rest_val_images, seed)
            self._add("train2014", lambda image_id: True, drop_unanswerable=True)
            self._add("val2014", lambda image_id: image_id not in rest_val, drop_unanswerable=True)
        elif split == "val":
            rest_val = self._rest_val_images(rest_val_images, seed)
            self._add("val2014", rest_val.__contains__, drop_unanswerable=False)
        else:
            self._add(SUBTYPES[split], lambda image_id: True, drop_unanswerable=False)

    def _rest_val_images(self, count: int, seed: int) -> set[int]:
        questions = read_json(questions_file(self.root, "val2014"))["questions"]
        image_ids = sorted({q["image_id"] for q in questions})
        random.Random(seed).shuffle(image_ids)
        return set(image_ids[:count])

    def _add(self, subtype: str, keep: Callable[[int], bool], drop_unanswerable: bool) -> None:
        questions = read_json(questions_file(self.root, subtype))["questions"]
        annotations = {}
        if annotations_file(self.root, subtype).is_file():
            annotations = {a["question_id"]: a for a in read_json(annotations_file(self.root, subtype))["annotations"]}
        for question in questions:
            if not keep(question["image_id"]):
                continue
            ann = annotations.get(question["question_id"])
            scores = {}
            if ann is not None:
                raw = soft_targets([a["answer"] for a in ann["answers"]])
                scores = {self.answer_to_label[a]: s for a, s in raw.items() if a in self.answer_to_label}
                if drop_unanswerable and not scores:
                    continue
                self.annotations[question["question_id"]] = ann
            self.items.append(
                {"qid": question["question_id"], "question": question["question"], "scores": scores}
                | {"image_path": image_path(subtype, question["image_id"])}
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        text, padding = text_segment(self.tokenizer, item["question"], self.text_len)
        targets = torch.zeros(len(self.answers))
        for label, score in item["scores"].items():
            targets[label] = score
        image = vl_image(self.root / item["image_path"], self.img_size, self.split == "train", self.randaug)
        return {"image": image, "text": text, "text_padding_mask": padding, "targets": targets, "qid": item["qid"]}


class VQAv2Task(Task):
    name = "vqav2"
    eval_split = "val"
    recipes = RECIPES
    selection_key = "score"
    dataset_augmentations = ("randaug",)

    def build_model(self, backbone_name: str, num_answers: int = NUM_RELEASED_ANSWERS, **overrides: Any) -> VQAModel:
        backbone = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": False}))
        return VQAModel(backbone, num_answers)

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> VQAv2Dataset:
        return VQAv2Dataset(root, split, tokenizer, img_size, **options)

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_BA = model(batch["image"], batch["text"], batch["text_padding_mask"]).float()
        targets_BA = batch["targets"].float()
        # Mean over B x A entries times A = sum over answers, mean over the batch (the release's scaling).
        loss = F.binary_cross_entropy_with_logits(logits_BA, targets_BA) * targets_BA.shape[1]
        score = targets_BA.gather(1, logits_BA.argmax(dim=1, keepdim=True)).mean()
        return loss, {"loss": loss.detach(), "score": score.detach() * 100}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        logits_BA = model(batch["image"], batch["text"], batch["text_padding_mask"])
        best_B = logits_BA.argmax(dim=1)
        target_B = batch["targets"].gather(1, best_B[:, None])[:, 0]
        return [
            {"question_id": int(q), "answer_index": int(a), "target_score": float(t)}
            for q, a, t in zip(batch["qid"].tolist(), best_B.tolist(), target_B.tolist(), strict=True)
        ]

    def evaluate(self, records: Sequence[Record], dataset: VQAv2Dataset) -> dict[str, Any]:
        if not dataset.annotations:
            raise ValueError(f"split {dataset.split!r} has no annotations; submit it to EvalAI instead")
        # Keyed by question id, so duplicates from padded distributed samplers count once.
        by_qid = {r["question_id"]: r for r in records}
        predictions = {qid: dataset.answers[r["answer_index"]] for qid, r in by_qid.items()}
        result = vqa_accuracy(predictions, dataset.annotations.values())
        result["score"] = 100.0 * sum(r["target_score"] for r in by_qid.values()) / len(by_qid)
        return result

    def baseline(self, train_set: VQAv2Dataset, eval_set: VQAv2Dataset) -> dict[str, Any]:
        """The answer the training split's annotators gave most often, for every question; bootstrap standard
        error (the per-question accuracy takes the values 0, 0.3, 0.6, 0.9 and 1, not a binomial)."""
        human = ([normalize_answer(a["answer"]) for a in ann["answers"]] for ann in train_set.annotations.values())
        answer = most_frequent_answer(human, allowed=eval_set.answers)
        index = eval_set.answer_to_label[answer]
        records = [
            {"question_id": item["qid"], "answer_index": index, "target_score": item["scores"].get(index, 0.0)}
            for item in eval_set.items
        ]
        metrics = self.evaluate(records, eval_set)
        per_question = [question_accuracy(answer, ann["answers"]) for ann in eval_set.annotations.values()]
        stderr = {"overall": bootstrap_stderr(per_question, lambda xs: 100.0 * sum(xs) / len(xs))}
        predictor = f"most frequent training answer {answer!r}"
        return baseline_result(predictor, metrics, stderr, bootstrap_method(), len(per_question))

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: VQAv2Dataset) -> Path:
        return write_json(
            [{"question_id": r["question_id"], "answer": dataset.answers[r["answer_index"]]} for r in records], path
        )


register(VQAv2Task())
