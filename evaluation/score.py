"""Scores prediction files in the official benchmark formats against the official annotation files.

Entry point: `score_files(task, predictions, annotations, questions=None, **options) -> dict`. Metric definitions
live in `evaluation.metrics`; this module only reads, validates and maps files (retrieval score matrices:
`evaluation.score_retrieval`). Every malformed or mismatching file raises `ScoreFileError` (a ValueError)
whose message starts with the offending file's path. The format of every task is described, in the words
`beit3 score --help` prints, in `evaluation.score_formats.FORMATS`.
"""

import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from evaluation.metrics.captioning import caption_scores, nocaps_scores
from evaluation.metrics.classification import nlvr2_scores, ranked_accuracy
from evaluation.metrics.ids import sample_ids
from evaluation.metrics.vqa import DEFAULT_VQA_EVAL_REVISION, check_revision, vqa_accuracy
from evaluation.score_formats import TASK_OPTIONS, TASKS
from evaluation.score_io import (
    ScoreFileError,
    check_ids,
    open_text,
    parse_json,
    read_json,
    read_json_records,
    records_under,
    require_fields,
    unique_by,
)
from evaluation.score_retrieval import RETRIEVAL_BENCHMARKS, score_retrieval

logger = logging.getLogger(__name__)

IMAGENET_NUM_CLASSES = 1000


def score_files(
    task: str,
    predictions: Path,
    annotations: Path,
    questions: Path | None = None,
    *,
    vqa_eval_revision: str | None = None,
    num_classes: int | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Scores a prediction file of `task` against the official annotation file(s).

    Args:
        task: One of `TASKS`.
        predictions: Prediction file in the task's format (`evaluation.score_formats.FORMATS`).
        annotations: Official ground-truth file of the evaluated split.
        questions: VQAv2 question file; optional, and only accepted for `vqav2`.
        vqa_eval_revision: `vqav2` only: "2021" (default, the current official script) or "2017".
        num_classes: `imagenet` only: class indices must lie in 0..num_classes-1 (default 1000).
        split: Retrieval only: the Karpathy split the score matrix covers (default "test").

    Returns:
        The task's metrics as a JSON-serialisable dict.

    Raises:
        ValueError: For an unknown task or revision, or an option given for a task that does not read it.
        ScoreFileError: For a file that cannot be read, is malformed, or does not match the others.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    options = {"questions": questions, "vqa_eval_revision": vqa_eval_revision, "num_classes": num_classes}
    for option, value in (options | {"split": split}).items():
        if value is not None and task not in TASK_OPTIONS[option]:
            raise ValueError(f"{option} is only used by {', '.join(TASK_OPTIONS[option])}, not {task}")
    predictions, annotations = Path(predictions), Path(annotations)
    if task == "vqav2":
        revision = vqa_eval_revision or DEFAULT_VQA_EVAL_REVISION
        check_revision(revision)
        return _score_vqav2(predictions, annotations, None if questions is None else Path(questions), revision)
    if task == "imagenet":
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return _score_imagenet(predictions, annotations, num_classes or IMAGENET_NUM_CLASSES)
    if task in RETRIEVAL_BENCHMARKS:
        return score_retrieval(predictions, annotations, RETRIEVAL_BENCHMARKS[task], split or "test")
    return _SCORERS[task](predictions, annotations)


# ---------------------------------------------------------------------------------------------------- VQAv2


def _score_vqav2(predictions: Path, annotations: Path, questions: Path | None, revision: str) -> dict[str, Any]:
    by_qid = _read_vqa_annotations(annotations)
    if questions is not None:
        by_qid = _select_questions(questions, by_qid, annotations)
    answers = read_json(predictions)
    if not isinstance(answers, list):
        raise ScoreFileError(predictions, "expected a JSON list of {'question_id', 'answer'} objects")
    for i, entry in enumerate(answers):
        require_fields(predictions, entry, ("question_id", "answer"), i)
        if not isinstance(entry["answer"], str):
            raise ScoreFileError(predictions, f"entry {i}: 'answer' must be a string")
    predicted = {qid: entry["answer"] for qid, entry in unique_by(predictions, answers, "question_id").items()}
    check_ids(predictions, by_qid, predicted, "question ids")
    return vqa_accuracy(predicted, by_qid.values(), revision=revision)


def _read_vqa_annotations(path: Path) -> dict[Any, dict[str, Any]]:
    annotations = records_under(path, read_json(path), key="annotations")
    for i, ann in enumerate(annotations):
        require_fields(path, ann, ("question_id", "image_id", "question_type", "answer_type", "answers"), i)
        human = ann["answers"]
        well_formed = isinstance(human, list) and all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in human
        )
        if not (well_formed and human):
            raise ScoreFileError(path, f"annotation {i}: 'answers' must be a non-empty list of {{'answer': str}}")
    return unique_by(path, annotations, "question_id")


def _select_questions(path: Path, by_qid: dict[Any, dict[str, Any]], annotations: Path) -> dict[Any, dict[str, Any]]:
    """Restricts the annotations to the questions of the question file, checking that both files agree."""
    listed = records_under(path, read_json(path), key="questions")
    for i, question in enumerate(listed):
        require_fields(path, question, ("question_id", "image_id"), i)
    unannotated = [q["question_id"] for q in listed if q["question_id"] not in by_qid]
    if unannotated:
        raise ScoreFileError(
            path, f"{len(unannotated)} question ids missing from {annotations} (e.g. {sample_ids(unannotated)})"
        )
    moved = [q["question_id"] for q in listed if q["image_id"] != by_qid[q["question_id"]]["image_id"]]
    if moved:
        raise ScoreFileError(path, f"image ids disagree with {annotations} for questions {sample_ids(moved)}")
    return {qid: by_qid[qid] for qid in unique_by(path, listed, "question_id")}


# ---------------------------------------------------------------------------------------------- captioning


def _score_coco_captioning(predictions: Path, annotations: Path) -> dict[str, Any]:
    references, _ = _read_caption_annotations(annotations, with_domain=False)
    predicted = _read_caption_predictions(predictions)
    check_ids(predictions, references, predicted, "image ids")
    return caption_scores(references, predicted)


def _score_nocaps(predictions: Path, annotations: Path) -> dict[str, Any]:
    references, domains = _read_caption_annotations(annotations, with_domain=True)
    predicted = _read_caption_predictions(predictions)
    check_ids(predictions, references, predicted, "image ids")
    try:
        return nocaps_scores(references, predicted, domains)
    except ValueError as error:  # only domain problems remain at this point
        raise ScoreFileError(annotations, str(error)) from error


def _read_caption_annotations(path: Path, *, with_domain: bool) -> tuple[dict[Any, list[str]], dict[Any, str]]:
    data = read_json(path)
    images = records_under(path, data, key="images")
    anns = records_under(path, data, key="annotations")
    for i, image in enumerate(images):
        require_fields(path, image, ("id", "domain") if with_domain else ("id",), i, what="image")
    references: dict[Any, list[str]] = {image_id: [] for image_id in unique_by(path, images, "id")}
    domains = {image["id"]: image["domain"] for image in images} if with_domain else {}
    for i, ann in enumerate(anns):
        require_fields(path, ann, ("image_id", "caption"), i)
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
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ScoreFileError(path, "expected a JSON list of {'image_id', 'caption'} objects")
    for i, entry in enumerate(entries):
        require_fields(path, entry, ("image_id", "caption"), i)
        if not isinstance(entry["caption"], str):
            raise ScoreFileError(path, f"entry {i}: 'caption' must be a string")
    # Duplicates are an error rather than silently de-duplicated: pycocoevalcap needs exactly one per image.
    return {image_id: entry["caption"] for image_id, entry in unique_by(path, entries, "image_id").items()}


# --------------------------------------------------------------------------------------------------- NLVR2


def _score_nlvr2(predictions: Path, annotations: Path) -> dict[str, Any]:
    labels = _read_nlvr2_labels(annotations, read_json_records(annotations))
    rows = _read_csv_rows(predictions) if predictions.suffix.lower() == ".csv" else read_json_records(predictions)
    for i, row in enumerate(rows):
        require_fields(predictions, row, ("identifier", "label"), i)
    by_id = unique_by(predictions, rows, "identifier")
    predicted = {identifier: _predicted_truth(row["label"]) for identifier, row in by_id.items()}
    check_ids(predictions, labels, predicted, "identifiers")
    unrecognised = sorted(identifier for identifier, value in predicted.items() if value is None)
    if unrecognised:
        # Counted wrong, as the official script counts them; said loudly, since it is almost surely a format slip.
        examples = ", ".join(f"{i}={by_id[i]['label']!r}" for i in unrecognised[:5])
        logger.warning(
            "%s: %d predictions are not True/False and count as wrong (e.g. %s)",
            predictions,
            len(unrecognised),
            examples,
        )
    try:
        scores = nlvr2_scores(predicted, labels)
    except ValueError as error:  # a malformed identifier
        raise ScoreFileError(annotations, str(error)) from error
    return scores | {"num_unrecognised_labels": len(unrecognised)}


def _read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """The official CSV reading: each line stripped, then split on commas; fields are not stripped or unquoted."""
    rows = []
    with open_text(path) as file:
        for line_no, line in enumerate(file, start=1):
            fields = line.strip().split(",")
            if fields == [""] or (line_no == 1 and fields[0].lower() == "identifier"):  # blank line or a header
                continue
            if len(fields) != 2:
                raise ScoreFileError(path, f"line {line_no}: expected 'identifier,prediction', got {line.strip()!r}")
            rows.append({"identifier": fields[0], "label": fields[1]})
    return rows


def _predicted_truth(value: Any) -> bool | None:
    """A prediction as the official metric reads it: a JSON bool, or a string equal to true/false up to case.

    Anything else (" True", "1", 0, "yes") is None: never equal to a label, so it counts as wrong, like the
    official `prediction.lower() == label.lower()` comparison.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _read_nlvr2_labels(path: Path, rows: list[Any]) -> dict[str, bool]:
    """Ground-truth labels ("True"/"False", any case, or JSON bools); anything else is an error in the file."""
    for i, row in enumerate(rows):
        require_fields(path, row, ("identifier", "label"), i)
    labels = {}
    for identifier, row in unique_by(path, rows, "identifier").items():
        labels[identifier] = _predicted_truth(row["label"])
        if labels[identifier] is None:
            raise ScoreFileError(path, f"{identifier}: label {row['label']!r} is not True/False")
    return labels


# ------------------------------------------------------------------------------------------------ ImageNet


def _score_imagenet(predictions: Path, annotations: Path, num_classes: int) -> dict[str, Any]:
    raw = read_json(predictions)
    if not isinstance(raw, dict):
        raise ScoreFileError(predictions, "expected a JSON object {image: class index or ranked class indices}")
    ranked = _by_stem(predictions, {key: _ranking(predictions, key, value, num_classes) for key, value in raw.items()})
    raw_labels = _read_imagenet_labels(annotations)
    outside = [key for key, label in raw_labels.items() if not 0 <= label < num_classes]
    if outside:
        key = outside[0]
        raise ScoreFileError(annotations, f"{key}: class {raw_labels[key]} is outside 0..{num_classes - 1}")
    labels = _by_stem(annotations, raw_labels)
    if not labels:
        raise ScoreFileError(annotations, "no labels")
    check_ids(predictions, labels, ranked, "images")
    # One class per image scores top-1 only; rankings score top-5 too, so then every ranking must hold 5 classes.
    # Fewer than 5 classes in all: top-5 is undefined (as in the fine-tuning evaluation).
    with_top5 = num_classes >= 5 and any(len(classes) > 1 for classes in ranked.values())
    short = sorted(key for key, classes in ranked.items() if len(classes) < 5)
    if with_top5 and short:
        raise ScoreFileError(
            predictions,
            f"{len(short)} images rank fewer than 5 classes while others rank more (e.g. {short[0]!r}: "
            f"{ranked[short[0]]}); give every image 5 or more classes, or one class each for top-1 only",
        )
    accuracy = ranked_accuracy(ranked, labels, ks=(1, 5) if with_top5 else (1,))
    return {"accuracy": accuracy["acc1"], "top5_accuracy": accuracy.get("acc5"), "num_images": len(labels)}


def _ranking(path: Path, key: str, value: Any, num_classes: int) -> list[int]:
    """One prediction record as a list of distinct class indices in 0..num_classes-1, best first."""
    classes = value if isinstance(value, list) else [value]
    if not classes or not all(_is_int(c) for c in classes):
        raise ScoreFileError(path, f"{key}: expected a class index or a list of them, got {value!r}")
    outside = [c for c in classes if not 0 <= c < num_classes]
    if outside:
        raise ScoreFileError(path, f"{key}: class {outside[0]} is outside 0..{num_classes - 1}")
    if len(set(classes)) != len(classes):
        repeated = next(c for c in classes if classes.count(c) > 1)
        raise ScoreFileError(path, f"{key}: class {repeated} appears more than once in the ranking {classes}")
    return classes


def _read_imagenet_labels(path: Path) -> dict[str, int]:
    with open_text(path) as file:
        text = file.read()
    if text.lstrip().startswith("{"):
        labels = parse_json(path, text)
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


def _score_ade20k(predictions: Path, annotations: Path) -> dict[str, Any]:
    from evaluation.dense.segmentation.scoring import score_label_maps

    return score_label_maps(predictions, annotations)


def _score_coco_detection(predictions: Path, annotations: Path) -> dict[str, Any]:
    from evaluation.metrics.detection import check_instances, check_results, detection_metrics

    try:
        gt, counts = check_instances(read_json(annotations), str(annotations))
    except ValueError as error:
        raise ScoreFileError(annotations, str(error).removeprefix(f"{annotations}: ")) from error
    try:
        results = check_results(read_json(predictions), gt, str(predictions))
    except ValueError as error:
        raise ScoreFileError(predictions, str(error).removeprefix(f"{predictions}: ")) from error
    iou_types = ("bbox", "segm") if results and all("segmentation" in r for r in results) else ("bbox",)
    return detection_metrics(gt, results, iou_types) | {"annotation_counts": counts}


_SCORERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "coco_captioning": _score_coco_captioning,
    "nocaps": _score_nocaps,
    "nlvr2": _score_nlvr2,
    "ade20k": _score_ade20k,
    "coco_detection": _score_coco_detection,
}  # the tasks with options (vqav2, imagenet, retrieval) are dispatched on their own
