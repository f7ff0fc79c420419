"""Scores ADE20K label-map predictions (the challenge's PNG layout) against the annotation PNGs.

Predictions: a zip file or a folder of `<image stem>.png`, single-channel, values 1..K (class + 1, as the ADE
challenge and `ADE20KTask.write_submission` write them). Annotations: the `annotations/<split>` folder of the
`ADEChallengeData2016` layout (raw ids, 0 = ignored); K is the row count of `objectInfo150.txt` two folders up,
or 150 without it. Every annotated image needs exactly one prediction of its size; anything else raises
`ValueError` naming the file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.dense.segmentation.transforms import reduce_zero_label
from evaluation.metrics.segmentation import confusion_matrix, segmentation_metrics
from evaluation.tasks.ade20k_data import read_class_names, read_label


def _prediction_files(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(stem, display name, PNG bytes) of every prediction."""
    if path.is_dir():
        for file in sorted(path.glob("*.png")):
            yield file.stem, str(file), file.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if name.lower().endswith(".png"):
                    yield Path(name).stem, f"{path}:{name}", archive.read(name)
    else:
        raise ValueError(f"{path}: expected a folder or a zip file of PNG label maps")


def _decode_prediction(name: str, data: bytes, size: tuple[int, int], num_classes: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as png:
        if png.mode not in ("L", "P"):
            raise ValueError(f"{name}: prediction PNG must be single-channel, got mode {png.mode}")
        if png.size != size:
            raise ValueError(f"{name}: prediction is {png.size[0]}x{png.size[1]}, its annotation {size[0]}x{size[1]}")
        pred = np.array(png, dtype=np.int64)
    if pred.min() < 1 or pred.max() > num_classes:
        raise ValueError(f"{name}: prediction values must lie in 1..{num_classes}, got {pred.min()}..{pred.max()}")
    return pred - 1


def score_label_maps(predictions: str | Path, annotations: str | Path) -> dict[str, Any]:
    """mIoU, aAcc, mAcc (percent) and `num_images` of a prediction zip/folder against an annotation folder."""
    predictions, annotations = Path(predictions), Path(annotations)
    if not annotations.is_dir():
        raise ValueError(f"{annotations}: expected the annotations/<split> folder of label PNGs")
    num_classes = len(read_class_names(annotations.parent.parent))
    truth = {file.stem: file for file in sorted(annotations.glob("*.png"))}
    if not truth:
        raise ValueError(f"{annotations}: no label PNGs")
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    seen: set[str] = set()
    for stem, name, data in _prediction_files(predictions):
        if stem not in truth:
            raise ValueError(f"{name}: no annotation {stem}.png in {annotations}")
        if stem in seen:
            raise ValueError(f"{name}: a second prediction for {stem}")
        seen.add(stem)
        with Image.open(truth[stem]) as png:
            size = png.size
        gt = reduce_zero_label(read_label(truth[stem], size, num_classes))
        conf += confusion_matrix(_decode_prediction(name, data, size, num_classes), gt, num_classes)
    missing = sorted(set(truth) - seen)
    if missing:
        raise ValueError(f"{predictions}: no prediction for {len(missing)} annotated images, e.g. {missing[:3]}")
    metrics = segmentation_metrics(conf)
    return {key: metrics[key] for key in ("mIoU", "aAcc", "mAcc")} | {"num_images": len(seen)}
