"""ADE20K semantic segmentation (unit 2): BEiT-3 + UperNet, the BEiT v2 reference recipe.

BEiT-3 (arXiv 2208.10442) reports ADE20K with ViT-Adapter + Mask2Former at 896 px and released no code; the
released-scale reference is BEiT v2's mmseg setup (microsoft/unilm `beit2/semantic_segmentation`, configs
`upernet_beit_*_512_160k_ade20k`): features after four blocks, the deconv/pool pyramid, UperNet + FCN
auxiliary head (`evaluation.dense.upernet`), the training pipeline of `evaluation.dense.segmentation.transforms`,
sliding-window inference (`evaluation.dense.segmentation.inference`) and mmseg's metrics
(`evaluation.metrics.segmentation`). Data layout: `evaluation.tasks.ade20k_data`.

Loss: pixel cross entropy ignoring 255 on logits upsampled (bilinear) to the label size, averaged over ALL
pixels of the batch as mmseg 0.11 does (ignored pixels count in the denominator), plus 0.4 x the same on the
auxiliary head. Recipe differences: the reference schedule is linear warmup (1500 iterations) then poly decay
(power 1) to 0 per iteration; the project's fine-tuning loop runs warmup + cosine to `min_lr` (set to 0 here);
SyncBN runs as per-rank BatchNorm; the reference's layer-scale and relative position bias belong to the BEiT v2
backbone, not BEiT-3's.

Submission: a zip of `<image stem>.png` label maps in the ADE challenge ids (1..150 = class + 1).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import beit3_core
from beit3_core.checkpoint import _atomic_write
from evaluation.baselines import baseline_result
from evaluation.baselines.dense import majority_pixel_class, miou_stderr
from evaluation.baselines.stats import bootstrap_method
from evaluation.dense.backbone import dense_config
from evaluation.dense.segmentation.inference import predict_probabilities
from evaluation.dense.segmentation.transforms import IGNORE_INDEX
from evaluation.dense.upernet import AUX_CHANNELS, SegmentationModel
from evaluation.metrics.segmentation import confusion_matrix, segmentation_metrics
from evaluation.tasks.ade20k_data import ADE20KDataset
from evaluation.tasks.base import Batch, Record, Task, default_collate, register

AUX_LOSS_WEIGHT = 0.4
# 160k iterations at batch 16 over 20,210 training images = 126.7 epochs; warmup 1500 iterations = 1.19 epochs.
_COMMON = dict(img_size=512, epochs=127, warmup_epochs=1.19, batch_size=16, weight_decay=0.05, min_lr=0.0)
RECIPES = {
    "base": _COMMON | dict(lr=5e-5, layer_decay=0.75, drop_path=0.15),
    "large": _COMMON | dict(lr=4e-5, layer_decay=0.9, drop_path=0.2),
}


def pixel_cross_entropy(logits_BKhw: torch.Tensor, label_BHW: torch.Tensor) -> torch.Tensor:
    """mmseg 0.11 `CrossEntropyLoss`: logits resized to the label, ignore 255, mean over all pixels."""
    logits_BKHW = F.interpolate(logits_BKhw, size=label_BHW.shape[-2:], mode="bilinear", align_corners=False)
    losses = F.cross_entropy(logits_BKHW, label_BHW, ignore_index=IGNORE_INDEX, reduction="none")
    return losses.mean()


class ADE20KTask(Task):
    name = "ade20k"
    recipes = RECIPES
    selection_key = "mIoU"
    eval_split = "val"  # the challenge test labels are not public
    submission_suffix = ".zip"
    reads_text = False

    def build_model(
        self,
        backbone_name: str,
        num_classes: int = 150,
        dense: Any = None,
        channels: int | None = None,
        aux_channels: int = AUX_CHANNELS,
        **overrides: Any,
    ) -> nn.Module:
        """BEiT-3 (no final norm) + pyramid + UperNet + FCN auxiliary head.

        Head options: `dense` = `DenseConfig` fields (default the "beit2" pyramid); `channels` = UperNet width
        (default the embed dim, as the reference); `aux_channels` = auxiliary head width (256).
        """
        backbone = beit3_core.build_model(backbone_name, **(overrides | {"normalize_output": False}))
        return SegmentationModel(backbone, num_classes, dense_config(dense), channels, aux_channels)

    def dataset(self, split: str, root: str | Path, tokenizer: Any, img_size: int, **options: Any) -> ADE20KDataset:
        """The crop and the sliding window default to the model's `img_size` (512 in the recipe)."""
        options = {"crop_size": img_size, "slide_crop": img_size, "slide_stride": img_size * 2 // 3} | options
        return ADE20KDataset(root, split, **options)

    def collate(self, items: Sequence[dict[str, Any]]) -> Batch:
        """Training crops stack; whole evaluation images keep their sizes (a list of [3, h, w])."""
        if "label" in items[0]:
            return default_collate(items)
        return {key: [item[key] for item in items] for key in items[0]}

    def loss(self, model: nn.Module, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, aux = model(batch["image"], with_aux=True)
        decode = pixel_cross_entropy(logits, batch["label"])
        auxiliary = pixel_cross_entropy(aux, batch["label"])
        loss = decode + AUX_LOSS_WEIGHT * auxiliary
        with torch.no_grad():
            pred = F.interpolate(logits, size=batch["label"].shape[-2:], mode="bilinear").argmax(dim=1)
            valid = batch["label"] != IGNORE_INDEX
            acc = (pred == batch["label"])[valid].float().mean() if valid.any() else torch.zeros(())
        metrics = {"loss": loss.detach(), "decode_loss": decode.detach(), "aux_loss": auxiliary.detach()}
        return loss, metrics | {"pixel_acc": acc}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, tokenizer: Any = None) -> list[Record]:
        device = next(model.parameters()).device
        records = []
        for image, image_id, options in zip(batch["image"], batch["image_id"], batch["test"], strict=True):
            probs_Khw = predict_probabilities(model, image.to(device), model.num_classes, **options)
            records.append({"image_id": image_id, "pred": probs_Khw.argmax(dim=0).to(torch.uint8).cpu()})
        return records

    def evaluate(self, records: Sequence[Record], dataset: ADE20KDataset) -> dict[str, Any]:
        """mIoU, aAcc, mAcc (percent) over the split, and the IoU per class (None where undefined)."""
        ids = [r["image_id"] for r in records]
        expected = {stem for stem, _, _ in dataset.items}
        if len(set(ids)) != len(ids) or set(ids) != expected:
            raise ValueError(f"predictions cover {len(set(ids))} of {len(expected)} images ({len(ids)} records)")
        num_classes = len(dataset.classes)
        conf = np.zeros((num_classes, num_classes), dtype=np.int64)
        for record in records:
            pred = record["pred"].numpy() if isinstance(record["pred"], torch.Tensor) else record["pred"]
            conf += confusion_matrix(pred, dataset.label(record["image_id"]), num_classes)
        metrics = segmentation_metrics(conf)
        per_class = {n: (None if np.isnan(v) else v) for n, v in zip(dataset.classes, metrics["IoU"], strict=True)}
        return {key: metrics[key] for key in ("mIoU", "aAcc", "mAcc")} | {
            "per_class_IoU": per_class,
            "num_images": len(records),
        }

    def baseline(self, train_set: ADE20KDataset, eval_set: ADE20KDataset) -> dict[str, Any]:
        """The training split's majority pixel class everywhere; bootstrap standard error over test images."""
        num_classes = len(eval_set.classes)
        train_labels = (train_set.image_and_label(i)[1] for i in range(len(train_set)))
        majority = majority_pixel_class(train_labels, num_classes)
        confusions = []
        for stem, _, _ in eval_set.items:
            label = eval_set.label(stem)
            confusions.append(confusion_matrix(np.full(label.shape, majority, np.uint8), label, num_classes))
        scores = segmentation_metrics(np.sum(confusions, axis=0))
        metrics = {key: scores[key] for key in ("mIoU", "aAcc", "mAcc")} | {"num_images": len(confusions)}
        predictor = f"majority class {eval_set.classes[majority]!r} of the training pixels everywhere"
        stderr = {"mIoU": miou_stderr(confusions)}
        return baseline_result(predictor, metrics, stderr, bootstrap_method(), len(confusions))

    def write_submission(self, records: Sequence[Record], path: str | Path, dataset: Dataset) -> Path:
        return write_label_zip({r["image_id"]: r["pred"] for r in records}, Path(path))


def write_label_zip(predictions: dict[str, Any], path: Path) -> Path:
    """`<stem>.png` per image (class + 1, the ADE challenge ids), zipped; written atomically."""

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for stem in sorted(predictions):
                pred = np.asarray(predictions[stem], dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray((pred + 1).astype(np.uint8)).save(buffer, format="PNG")
                archive.writestr(f"{stem}.png", buffer.getvalue())

    return _atomic_write(path, write)


register(ADE20KTask())
