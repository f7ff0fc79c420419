"""Scores prediction files in the official benchmark formats against the official annotation files.

Entry point: `score_files(task, predictions, annotations, questions=None) -> dict`. Metric definitions live in
`evaluation.metrics`; this module only reads, validates and maps files. Every malformed or mismatching file
raises `ScoreFileError` (a ValueError) whose message starts with the offending file's path.

Tasks and formats:

- `vqav2`: predictions = the EvalAI submission JSON, a list of {"question_id": int, "answer": str};
  annotations = `v2_mscoco_{train,val}2014_annotations.json` ({"annotations": [{"question_id", "image_id",
  "question_type", "answer_type", "answers": [{"answer", ...}, x10], ...}], ...}); questions (optional) =
  `v2_OpenEnded_mscoco_*_questions.json` ({"questions": [{"image_id", "question", "question_id"}], ...}).
  Without questions every annotated question is evaluated; with them, exactly the listed questions are
  (e.g. a held-out subset of val), and each must be annotated with the same image id. Returns `overall`,
  `per_answer_type`, `per_question_type` (percent, 2 decimals, official VQA accuracy) and `num_questions`.
- `coco_captioning` / `nocaps`: predictions = list of {"image_id", "caption"}, one per annotated image;
  annotations = COCO caption format {"images": [{"id", ...}], "annotations": [{"image_id", "caption", ...}]}
  (Karpathy-split GT files such as `coco_karpathy_test_gt.json`, or `nocaps_val_4500_captions.json`, whose
  images also carry "domain"). Returns `BLEU_1`..`BLEU_4`, `METEOR`, `ROUGE_L`, `CIDEr` (pycocoevalcap scale),
  `num_images` and `note` (SPICE is not computed); `nocaps` adds `domains` with per-domain CIDEr.
- `nlvr2`: predictions = the official CSV "identifier,prediction" (`.csv`, no header, True/False), or JSON /
  JSON Lines of {"identifier", "label"} with label true/false (bool, 0/1 or string); annotations = the
  official JSON Lines file (`dev.json`, `test1.json`) with "identifier" and "label" ("True"/"False").
  Returns `accuracy` and `consistency` (percent), `num_examples`, `num_sentences`.
- `imagenet`: predictions = JSON object {image id or file name: class index, or class indices best first};
  annotations = JSON object {file name: class index}, or a text file of "file_name class_index" lines (the
  `val.txt` layout, 0-based indices in sorted-wnid order). Keys are matched on the file stem, so
  "val/n01440764/ILSVRC2012_val_00000293.JPEG", "ILSVRC2012_val_00000293.JPEG" and "ILSVRC2012_val_00000293"
  are the same image. Returns `accuracy` (top-1), `top5_accuracy` when every prediction ranks >= 5 classes,
  and `num_images`.
- `ade20k`: predictions = a zip file or folder of `<image stem>.png` label maps with the challenge ids 1..150;
  annotations = the `annotations/<split>` folder of the ADEChallengeData2016 layout. Returns `mIoU`, `aAcc`,
  `mAcc` (percent) and `num_images` (`evaluation.dense.segmentation.scoring`).
- `coco_detection`: predictions = the official COCO result file, a list of {"image_id", "category_id",
  "bbox" [x, y, w, h], "score"} with "segmentation" (compressed RLE) for masks; annotations =
  `instances_val2017.json`. Returns pycocotools `COCOeval` stats in percent as `bbox_AP`, `bbox_AP50`, `bbox_AP75`,
  `bbox_APs`/`m`/`l`, `bbox_AR1`/`10`/`100`, `bbox_ARs`/`m`/`l`, the same `segm_*` when every entry has a mask,
  `num_detections` and the annotation counts (`evaluation.metrics.detection`).
"""

import csv
import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from evaluation.metrics.captioning import caption_scores, nocaps_scores
from evaluation.metrics.classification import nlvr2_scores, ranked_accuracy
from evaluation.metrics.ids import check_same_ids, sample_ids
from evaluation.metrics.vqa import vqa_accuracy

TASKS = ("vqav2", "coco_captioning", "nocaps", "nlvr2", "imagenet", "ade20k", "coco_detection")


class ScoreFileError(ValueError):
    """A prediction or annotation file is unreadable, malformed, or does not match the other files."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def score_files(task: str, predictions: Path, annotations: Path, questions: Path | None = None) -> dict[str, Any]:
    """Scores a prediction file of `task` against the official annotation file(s).

    Args:
        task: One of `TASKS`.
        predictions: Prediction file in the task's submission format (module docstring).
        annotations: Official ground-truth file of the evaluated split.
        questions: VQAv2 question file; optional, and only accepted for `vqav2`.

    Returns:
        The task's metrics as a JSON-serialisable dict.

    Raises:
        ValueError: For an unknown task, or `questions` given for another task.
        ScoreFileError: For a file that cannot be read, is malformed, or does not match the others.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if questions is not None and task != "vqav2":
        raise ValueError(f"a questions file is only used by vqav2, not {task}")
    if task == "vqav2":
        return _score_vqav2(Path(predictions), Path(annotations), None if questions is None else Path(questions))
    return _SCORERS[task](Path(predictions), Path(annotations))


# ---------------------------------------------------------------------------------------------------- VQAv2


def _score_vqav2(predictions: Path, annotations: Path, questions: Path | None) -> dict[str, Any]:
    by_qid = _read_vqa_annotations(annotations)
    if questions is not None:
        by_qid = _select_questions(questions, by_qid, annotations)
    answers = _read_json(predictions)
    if not isinstance(answers, list):
        raise ScoreFileError(predictions, "expected a JSON list of {'question_id', 'answer'} objects")
    for i, entry in enumerate(answers):
        _require(predictions, entry, ("question_id", "answer"), i)
        if not isinstance(entry["answer"], str):
            raise ScoreFileError(predictions, f"entry {i}: 'answer' must be a string")
    predicted = {qid: entry["answer"] for qid, entry in _unique(predictions, answers, "question_id").items()}
    _check_ids(predictions, by_qid, predicted, "question ids")
    return vqa_accuracy(predicted, by_qid.values())


def _read_vqa_annotations(path: Path) -> dict[Any, dict[str, Any]]:
    annotations = _records(path, _read_json(path), key="annotations")
    for i, ann in enumerate(annotations):
        _require(path, ann, ("question_id", "image_id", "question_type", "answer_type", "answers"), i)
        human = ann["answers"]
        well_formed = isinstance(human, list) and all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in human
        )
        if not (well_formed and human):
            raise ScoreFileError(path, f"annotation {i}: 'answers' must be a non-empty list of {{'answer': str}}")
    return _unique(path, annotations, "question_id")


def _select_questions(path: Path, by_qid: dict[Any, dict[str, Any]], annotations: Path) -> dict[Any, dict[str, Any]]:
    """Restricts the annotations to the questions of the question file, checking that both files agree."""
    listed = _records(path, _read_json(path), key="questions")
    for i, question in enumerate(listed):
        _require(path, question, ("question_id", "image_id"), i)
    unannotated = [q["question_id"] for q in listed if q["question_id"] not in by_qid]
    if unannotated:
        raise ScoreFileError(
            path, f"{len(unannotated)} question ids missing from {annotations} (e.g. {sample_ids(unannotated)})"
        )
    moved = [q["question_id"] for q in listed if q["image_id"] != by_qid[q["question_id"]]["image_id"]]
    if moved:
        raise ScoreFileError(path, f"image ids disagree with {annotations} for questions {sample_ids(moved)}")
    return {qid: by_qid[qid] for qid in _unique(path, listed, "question_id")}


# ---------------------------------------------------------------------------------------------- captioning


def _score_coco_captioning(predictions: Path, annotations: Path) -> dict[str, Any]:
    references, _ = _read_caption_annotations(annotations, with_domain=False)
    predicted = _read_caption_predictions(predictions)
    _check_ids(predictions, references, predicted, "image ids")
    return caption_scores(references, predicted)


def _score_nocaps(predictions: Path, annotations: Path) -> dict[str, Any]:
    references, domains = _read_caption_annotations(annotations, with_domain=True)
    predicted = _read_caption_predictions(predictions)
    _check_ids(predictions, references, predicted, "image ids")
    try:
        return nocaps_scores(references, predicted, domains)
    except ValueError as error:  # only domain problems remain at this point
        raise ScoreFileError(annotations, str(error)) from error


def _read_caption_annotations(path: Path, *, with_domain: bool) -> tuple[dict[Any, list[str]], dict[Any, str]]:
    data = _read_json(path)
    images = _records(path, data, key="images")
    anns = _records(path, data, key="annotations")
    for i, image in enumerate(images):
        _require(path, image, ("id", "domain") if with_domain else ("id",), i, what="image")
    references: dict[Any, list[str]] = {image_id: [] for image_id in _unique(path, images, "id")}
    domains = {image["id"]: image["domain"] for image in images} if with_domain else {}
    for i, ann in enumerate(anns):
        _require(path, ann, ("image_id", "caption"), i)
        if ann["image_id"] not in references:
            raise ScoreFileError(path, f"annotation {i} refers to unknown image id {ann['image_id']!r}")
        if not isinstance(ann["caption"], str):
            raise ScoreFileError(path, f"annotation {i}: 'caption' must be a string")
        references[ann["image_id"]].append(ann["caption"])
    uncaptioned = [image_id for image_id, captions in references.items() if not captions]
    if uncaptioned:
        raise ScoreFileError(path, f"{len(uncaptioned)} images have no caption (e.g. {sample_ids(uncaptioned)})")
    return references, domains


def _read_caption_predictions(path: Path) -> dict[Any, str]:
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ScoreFileError(path, "expected a JSON list of {'image_id', 'caption'} objects")
    for i, entry in enumerate(entries):
        _require(path, entry, ("image_id", "caption"), i)
        if not isinstance(entry["caption"], str):
            raise ScoreFileError(path, f"entry {i}: 'caption' must be a string")
    # Duplicates are an error rather than silently de-duplicated: pycocoevalcap needs exactly one per image.
    return {image_id: entry["caption"] for image_id, entry in _unique(path, entries, "image_id").items()}


# --------------------------------------------------------------------------------------------------- NLVR2


def _score_nlvr2(predictions: Path, annotations: Path) -> dict[str, Any]:
    labels = _read_nlvr2_labels(annotations, _read_json_records(annotations))
    if predictions.suffix.lower() == ".csv":
        rows = _read_csv_rows(predictions)
    else:
        rows = _read_json_records(predictions)
    predicted = _read_nlvr2_labels(predictions, rows)
    _check_ids(predictions, labels, predicted, "identifiers")
    try:
        return nlvr2_scores(predicted, labels)
    except ValueError as error:  # a malformed identifier
        raise ScoreFileError(annotations, str(error)) from error


def _read_csv_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with _open(path) as file:
        for line_no, row in enumerate(csv.reader(file), start=1):
            if not row or (line_no == 1 and row[0].strip().lower() == "identifier"):  # blank line or a header
                continue
            if len(row) != 2:
                raise ScoreFileError(path, f"line {line_no}: expected 'identifier,prediction', got {row!r}")
            rows.append({"identifier": row[0].strip(), "label": row[1].strip()})
    return rows


def _read_nlvr2_labels(path: Path, rows: list[Any]) -> dict[str, bool]:
    for i, row in enumerate(rows):
        _require(path, row, ("identifier", "label"), i)
    by_id = _unique(path, rows, "identifier")
    return {identifier: _truth_value(path, row["label"], identifier) for identifier, row in by_id.items()}


def _truth_value(path: Path, value: Any, identifier: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ScoreFileError(path, f"{identifier}: label {value!r} is not True/False")


# ------------------------------------------------------------------------------------------------ ImageNet


def _score_imagenet(predictions: Path, annotations: Path) -> dict[str, Any]:
    raw = _read_json(predictions)
    if not isinstance(raw, dict):
        raise ScoreFileError(predictions, "expected a JSON object {image: class index or ranked class indices}")
    ranked: dict[str, list[int]] = {}
    for key, value in raw.items():
        classes = [value] if not isinstance(value, list) else value
        if not classes or not all(_is_int(c) for c in classes):
            raise ScoreFileError(predictions, f"{key}: expected a class index or a list of them, got {value!r}")
        ranked[key] = classes
    ranked = _by_stem(predictions, ranked)
    labels = _by_stem(annotations, _read_imagenet_labels(annotations))
    if not labels:
        raise ScoreFileError(annotations, "no labels")
    _check_ids(predictions, labels, ranked, "images")
    with_top5 = all(len(classes) >= 5 for classes in ranked.values())
    accuracy = ranked_accuracy(ranked, labels, ks=(1, 5) if with_top5 else (1,))
    result = {"accuracy": accuracy["acc1"], "num_images": len(labels)}
    if with_top5:
        result["top5_accuracy"] = accuracy["acc5"]
    return result


def _read_imagenet_labels(path: Path) -> dict[str, int]:
    with _open(path) as file:
        text = file.read()
    if text.lstrip().startswith("{"):
        labels = _parse_json(path, text)
        bad = [key for key, value in labels.items() if not _is_int(value)]
        if bad:
            raise ScoreFileError(path, f"labels must be class indices (e.g. {bad[0]!r}: {labels[bad[0]]!r})")
        return labels
    labels = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            # The devkit ground truth holds 1-based ILSVRC ids in meta.mat order, not sorted-wnid class indices.
            raise ScoreFileError(
                path,
                f"line {line_no}: one column only; devkit ILSVRC ids (meta.mat order) must first be mapped to "
                "sorted-wnid class indices and written as 'file_name class_index' lines",
            )
        if len(fields) != 2 or not fields[1].isdigit():
            raise ScoreFileError(path, f"line {line_no}: expected 'file_name class_index', got {line!r}")
        labels[fields[0]] = int(fields[1])
    return labels


def _by_stem(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Re-keys by file stem so paths, file names and bare ids of one image compare equal."""
    keyed: dict[str, Any] = {}
    for key, value in values.items():
        stem = PurePosixPath(str(key).replace("\\", "/")).stem
        if stem in keyed:
            raise ScoreFileError(path, f"two entries for image {stem!r}")
        keyed[stem] = value
    return keyed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ shared readers


def _open(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8")
    except OSError as error:
        raise ScoreFileError(path, f"cannot read file ({error.strerror or error})") from error


def _read_json(path: Path) -> Any:
    with _open(path) as file:
        return _parse_json(path, file.read())


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ScoreFileError(path, f"bad JSON ({error})") from error


def _read_json_records(path: Path) -> list[Any]:
    """Reads a JSON list or JSON Lines (NLVR2 ships JSON Lines under a .json name)."""
    with _open(path) as file:
        text = file.read()
    if text.lstrip().startswith("["):
        return _parse_json(path, text)
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ScoreFileError(path, f"bad JSON on line {line_no} ({error})") from error
    return records


def _records(path: Path, data: Any, *, key: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ScoreFileError(path, f"expected a JSON object with a list under {key!r}")
    if not data[key]:
        raise ScoreFileError(path, f"the {key!r} list is empty")
    return data[key]


def _require(path: Path, entry: Any, fields: tuple[str, ...], index: int, what: str = "entry") -> None:
    if not isinstance(entry, dict):
        raise ScoreFileError(path, f"{what} {index} is not a JSON object")
    missing = [field for field in fields if field not in entry]
    if missing:
        raise ScoreFileError(path, f"{what} {index} lacks {', '.join(repr(f) for f in missing)}")


def _unique(path: Path, entries: list[dict[str, Any]], field: str) -> dict[Any, dict[str, Any]]:
    by_id: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry[field], int | str) or isinstance(entry[field], bool):
            raise ScoreFileError(path, f"{field} {entry[field]!r} is not an integer or a string")
        if entry[field] in by_id:
            raise ScoreFileError(path, f"duplicate {field} {entry[field]!r}")
        by_id[entry[field]] = entry
    return by_id


def _check_ids(path: Path, expected: Any, given: Any, what: str) -> None:
    try:
        check_same_ids(expected, given, what=what)
    except ValueError as error:
        raise ScoreFileError(path, str(error)) from error


def _score_ade20k(predictions: Path, annotations: Path) -> dict[str, Any]:
    from evaluation.dense.segmentation.scoring import score_label_maps

    return score_label_maps(predictions, annotations)


def _score_coco_detection(predictions: Path, annotations: Path) -> dict[str, Any]:
    from evaluation.metrics.detection import check_instances, check_results, detection_metrics

    try:
        gt, counts = check_instances(_read_json(annotations), str(annotations))
    except ValueError as error:
        raise ScoreFileError(annotations, str(error).removeprefix(f"{annotations}: ")) from error
    try:
        results = check_results(_read_json(predictions), gt, str(predictions))
    except ValueError as error:
        raise ScoreFileError(predictions, str(error).removeprefix(f"{predictions}: ")) from error
    iou_types = ("bbox", "segm") if results and all("segmentation" in r for r in results) else ("bbox",)
    return detection_metrics(gt, results, iou_types) | {"annotation_counts": counts}


_SCORERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "coco_captioning": _score_coco_captioning,
    "nocaps": _score_nocaps,
    "nlvr2": _score_nlvr2,
    "imagenet": _score_imagenet,
    "ade20k": _score_ade20k,
    "coco_detection": _score_coco_detection,
}  # vqav2 takes a third file and is dispatched on its own
