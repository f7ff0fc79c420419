"""`beit3 score` end to end on miniature files written in the official formats of every task."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.metrics.captioning import caption_scores, nocaps_scores
from evaluation.score import TASKS, ScoreFileError, score_files
from flows.cli import main
from flows.commands.score import TASK_CHOICES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _score(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> dict:
    """Runs `beit3 score ...` in-process and parses its stdout, which must be exactly one JSON object."""
    assert main(["score", *map(str, argv)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n")
    return json.loads(out)


def _fail(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """Runs a `beit3 score ...` that must fail, and returns its stderr."""
    assert main(["score", *map(str, argv)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_cli_choices_match_library_tasks() -> None:
    assert TASK_CHOICES == TASKS


# -------------------------------------------------------------------------------------------------- VQAv2

VQA_QUESTIONS = [  # (image_id, question_id, question, question_type, answer_type, ten human answers)
    (9, 9000, "How many dogs are there?", "how many", "number", ["2"] * 10),
    (42, 42000, "Is this a cat?", "is this a", "yes/no", ["yes"] * 3 + ["no"] * 7),
    (42, 42001, "What is on the plate?", "what is", "other", ["broccoli"] * 2 + ["rice"] * 8),
]


def _vqa_files(tmp_path: Path) -> tuple[Path, Path]:
    header = {"info": {"description": "miniature"}, "license": {"name": "CC"}, "data_type": "mscoco"}
    annotations = [
        {
            "question_id": qid,
            "image_id": image_id,
            "question_type": qtype,
            "answer_type": atype,
            "multiple_choice_answer": max(set(answers), key=answers.count),
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }
        for image_id, qid, _, qtype, atype, answers in VQA_QUESTIONS
    ]
    questions = [
        {"image_id": image_id, "question": text, "question_id": qid} for image_id, qid, text, *_ in VQA_QUESTIONS
    ]
    ann_path = _write_json(
        tmp_path / "v2_mscoco_val2014_annotations.json",
        {**header, "data_subtype": "val2014", "annotations": annotations},
    )
    ques_path = _write_json(
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
        {**header, "task_type": "Open-Ended", "data_subtype": "val2014", "questions": questions},
    )
    return ann_path, ques_path


def _vqa_predictions(tmp_path: Path, answers: dict[int, str]) -> Path:
    rows = [{"question_id": qid, "answer": answer} for qid, answer in answers.items()]
    return _write_json(tmp_path / "vqa_results.json", rows)


def test_score_vqav2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations, questions = _vqa_files(tmp_path)
    predictions = _vqa_predictions(tmp_path, {9000: "two", 42000: "Yes.", 42001: "The broccoli!"})
    args = ("vqav2", "--predictions", predictions, "--annotations", annotations)
    # Current script: ten unanimous "2" are compared raw with "two" (0.0); "Yes." -> "yes" matches 3/10 (0.9);
    # "The broccoli!" -> "broccoli" matches 2/10 (0.6). Overall 100 * 1.5 / 3 = 50.0.
    result = _score(capsys, *args, "--questions", questions)
    assert result["overall"] == 50.0 and result["vqa_eval_revision"] == "2021"
    assert result["per_answer_type"] == {"number": 0.0, "other": 60.0, "yes/no": 90.0}
    assert _score(capsys, *args) == result  # the question file only narrows and checks the set
    # 2017 script: the prediction alone is normalised, "two" -> "2" matches 10/10 (1.0): 100 * 2.5 / 3 = 83.33.
    old = _score(capsys, *args, "--vqa-eval-revision", "2017")
    assert old["overall"] == 83.33 and old["vqa_eval_revision"] == "2017"
    assert old["per_answer_type"] == {"number": 100.0, "other": 60.0, "yes/no": 90.0}

    perfect = _vqa_predictions(tmp_path, {9000: "2", 42000: "no", 42001: "rice"})
    assert _score(capsys, "vqav2", "--predictions", perfect, "--annotations", annotations)["overall"] == 100.0


def test_score_vqav2_question_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations, questions = _vqa_files(tmp_path)
    data = json.loads(questions.read_text())
    data["questions"] = data["questions"][:1]
    _write_json(questions, data)
    predictions = _vqa_predictions(tmp_path, {9000: "blue"})
    result = _score(
        capsys, "vqav2", "--predictions", predictions, "--annotations", annotations, "--questions", questions
    )
    assert result["overall"] == 0.0 and result["num_questions"] == 1


def test_score_vqav2_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations, questions = _vqa_files(tmp_path)
    missing = _vqa_predictions(tmp_path, {9000: "2", 42000: "no"})
    err = _fail(capsys, "vqav2", "--predictions", missing, "--annotations", annotations)
    assert str(missing) in err and "1 question ids without a prediction (e.g. 42001)" in err

    data = json.loads(questions.read_text())
    data["questions"][0]["image_id"] = 10
    _write_json(questions, data)
    predictions = _vqa_predictions(tmp_path, {9000: "2", 42000: "no", 42001: "rice"})
    err = _fail(capsys, "vqav2", "--predictions", predictions, "--annotations", annotations, "--questions", questions)
    assert str(questions) in err and "image ids disagree" in err

    predictions.write_text('[{"question_id": 9000, "answer": "2"},')
    err = _fail(capsys, "vqav2", "--predictions", predictions, "--annotations", annotations)
    assert str(predictions) in err and "bad JSON" in err


# --------------------------------------------------------------------------------------------- captioning


CAPTION_REFERENCES = {
    391895: ["A man with a red helmet on a small moped on a dirt road.", "Man riding a motor bike on a dirt road."],
    522418: ["A woman wearing a net on her head cutting a cake.", "A woman cutting a large white sheet cake."],
    184613: [
        "A child holding a flowered umbrella and petting a yak.",
        "A young man holding an umbrella next to a herd.",
    ],
}
CAPTION_PREDICTIONS = {
    391895: "A man riding a motor bike on a dirt road.",
    522418: "A woman cutting a cake.",
    184613: "A boy with an umbrella next to cattle.",
}


def _coco_caption_gt(tmp_path: Path, domains: dict[int, str] | None = None) -> Path:
    """COCO caption format, as in BLIP's coco_karpathy_test_gt.json or nocaps_val_4500_captions.json."""
    images, annotations = [], []
    for image_id, captions in CAPTION_REFERENCES.items():
        image = {"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg", "height": 480, "width": 640}
        if domains is not None:
            image |= {"domain": domains[image_id], "open_images_id": f"{image_id:016x}"}
        images.append(image)
        for caption in captions:
            annotations.append({"image_id": image_id, "id": len(annotations), "caption": caption})
    return _write_json(
        tmp_path / "captions_gt.json", {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    )


def _caption_predictions(tmp_path: Path, captions: dict[int, str]) -> Path:
    rows = [{"image_id": image_id, "caption": caption} for image_id, caption in captions.items()]
    return _write_json(tmp_path / "caption_results.json", rows)


@pytest.mark.slow
def test_score_coco_captioning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _coco_caption_gt(tmp_path)
    predictions = _caption_predictions(tmp_path, CAPTION_PREDICTIONS)
    result = _score(capsys, "coco_captioning", "--predictions", predictions, "--annotations", gt)
    # Known values of the metrics themselves are pinned in test_metrics_captioning; here the file route must
    # give what the library gives on the same captions.
    assert result == caption_scores(CAPTION_REFERENCES, CAPTION_PREDICTIONS)
    assert 0.0 < result["CIDEr"] and "SPICE" in result["note"]


@pytest.mark.slow
def test_score_nocaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domains = {391895: "in-domain", 522418: "in-domain", 184613: "out-domain"}
    gt = _coco_caption_gt(tmp_path, domains=domains)
    predictions = _caption_predictions(tmp_path, CAPTION_PREDICTIONS)
    result = _score(capsys, "nocaps", "--predictions", predictions, "--annotations", gt)
    assert result == nocaps_scores(CAPTION_REFERENCES, CAPTION_PREDICTIONS, domains)
    assert result["domains"]["in-domain"]["num_images"] == 2 and result["domains"]["in-domain"]["CIDEr"] > 0.0
    assert result["domains"]["out-domain"]["num_images"] == 1  # a single image: CIDEr degenerates to 0
    assert "near-domain" not in result["domains"]
    assert 0.0 < result["CIDEr"] and "BLEU_4" in result


def test_score_captioning_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _coco_caption_gt(tmp_path)
    unknown = _caption_predictions(tmp_path, {**CAPTION_PREDICTIONS, 7: "a cat"})
    err = _fail(capsys, "coco_captioning", "--predictions", unknown, "--annotations", gt)
    assert str(unknown) in err and "predicted image ids not in the ground truth (e.g. 7)" in err

    err = _fail(capsys, "nocaps", "--predictions", unknown, "--annotations", gt)
    assert str(gt) in err and "'domain'" in err

    duplicated = _write_json(tmp_path / "dup.json", [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    err = _fail(capsys, "coco_captioning", "--predictions", duplicated, "--annotations", gt)
    assert str(duplicated) in err and "duplicate image_id 1" in err

    data = json.loads(gt.read_text())
    data["annotations"][0]["image_id"] = 5
    _write_json(gt, data)
    err = _fail(capsys, "coco_captioning", "--predictions", unknown, "--annotations", gt)
    assert str(gt) in err and "unknown image id 5" in err

    gt.write_text("{}")
    err = _fail(capsys, "coco_captioning", "--predictions", unknown, "--annotations", gt)
    assert str(gt) in err and "list under 'images'" in err


# -------------------------------------------------------------------------------------------------- NLVR2

NLVR2_EXAMPLES = [  # identifier split-setid-pairid-sentenceid; pairs 0 and 1 of a set share the sentence
    ("dev-850-0-0", "The left image contains twice the number of dogs as the right image.", "True"),
    ("dev-850-1-0", "The left image contains twice the number of dogs as the right image.", "False"),
    ("dev-851-0-1", "One image shows exactly two brown acorns in back-to-back caps.", "True"),
    ("dev-851-1-1", "One image shows exactly two brown acorns in back-to-back caps.", "True"),
]


def _nlvr2_gt(tmp_path: Path) -> Path:
    rows = [
        {
            "identifier": identifier,
            "sentence": sentence,
            "label": label,
            "left_url": f"https://example.invalid/{identifier}-left.jpg",
            "right_url": f"https://example.invalid/{identifier}-right.jpg",
            "writer": "103",
            "synset": "dog",
            "query": "dogs",
            "validation": {"2": label},
            "extra_validations": {"158": label},
        }
        for identifier, sentence, label in NLVR2_EXAMPLES
    ]
    return _write_jsonl(tmp_path / "dev.json", rows)  # JSON Lines despite the extension, like the release


def test_score_nlvr2_csv_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _nlvr2_gt(tmp_path)
    # Official CSV: the second pair of sentence 0 is wrong -> accuracy 3/4, consistency 1/2.
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text("dev-850-0-0,True\ndev-850-1-0,True\ndev-851-0-1,True\ndev-851-1-1,true\n")
    expected = {"accuracy": 75.0, "consistency": 50.0, "num_examples": 4, "num_sentences": 2}
    expected |= {"num_unrecognised_labels": 0}
    assert _score(capsys, "nlvr2", "--predictions", csv_path, "--annotations", gt) == expected

    # JSON bools and strings equal to the label up to case count, like the official lower-cased comparison.
    labels = [True, True, "TRUE", "true"]  # the second pair of sentence 0 is wrong as above
    rows = [{"identifier": i, "label": label} for (i, _, _), label in zip(NLVR2_EXAMPLES, labels, strict=True)]
    jsonl = _write_jsonl(tmp_path / "predictions.jsonl", rows)
    assert _score(capsys, "nlvr2", "--predictions", jsonl, "--annotations", gt) == expected

    perfect = _write_json(tmp_path / "perfect.json", [{"identifier": i, "label": lab} for i, _, lab in NLVR2_EXAMPLES])
    assert _score(capsys, "nlvr2", "--predictions", perfect, "--annotations", gt)["consistency"] == 100.0


def test_score_nlvr2_counts_inexact_labels_as_wrong_like_the_official_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    gt = _nlvr2_gt(tmp_path)  # labels True, False, True, True
    csv_path = tmp_path / "predictions.csv"
    # The official script splits each stripped line on "," and compares prediction.lower() with label.lower():
    # "1" and " True" are not "true", "0" is not "false", "maybe" is nothing. Only line 2 ("false") is right.
    csv_path.write_text("dev-850-0-0,1\ndev-850-1-0,false\ndev-851-0-1, True\ndev-851-1-1,maybe\n")
    result = _score(capsys, "nlvr2", "--predictions", csv_path, "--annotations", gt)
    assert (result["accuracy"], result["consistency"], result["num_unrecognised_labels"]) == (25.0, 0.0, 3)
    assert "3 predictions are not True/False and count as wrong" in caplog.text and str(csv_path) in caplog.text
    jsonl = _write_jsonl(tmp_path / "predictions.jsonl", [{"identifier": i, "label": 1} for i, _, _ in NLVR2_EXAMPLES])
    result = _score(capsys, "nlvr2", "--predictions", jsonl, "--annotations", gt)
    assert (result["accuracy"], result["num_unrecognised_labels"]) == (0.0, 4)


def test_score_nlvr2_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _nlvr2_gt(tmp_path)
    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text("dev-850-0-0,True\ndev-850-1-0,True,0.9\n")
    err = _fail(capsys, "nlvr2", "--predictions", csv_path, "--annotations", gt)
    assert str(csv_path) in err and "line 2: expected 'identifier,prediction'" in err
    # Identifiers are not stripped either: "dev-850-0-0 " is not an annotated identifier.
    csv_path.write_text("dev-850-0-0 ,True\ndev-850-1-0,True\ndev-851-0-1,True\ndev-851-1-1,True\n")
    err = _fail(capsys, "nlvr2", "--predictions", csv_path, "--annotations", gt)
    assert str(csv_path) in err and "'dev-850-0-0 '" in err
    bad_gt = _write_jsonl(tmp_path / "bad_dev.json", [{"identifier": "dev-850-0-0", "label": "1"}])
    err = _fail(capsys, "nlvr2", "--predictions", csv_path, "--annotations", bad_gt)
    assert str(bad_gt) in err and "dev-850-0-0: label '1' is not True/False" in err

    csv_path.write_text("dev-850-0-0,True\n")
    err = _fail(capsys, "nlvr2", "--predictions", csv_path, "--annotations", gt)
    assert str(csv_path) in err and "3 identifiers without a prediction" in err


# ----------------------------------------------------------------------------------------------- ImageNet


def _imagenet_labels() -> dict[str, int]:
    """Six val images with 0-based class indices in sorted-wnid order."""
    classes = [65, 970, 230, 809, 516, 57]
    return {f"ILSVRC2012_val_{n:08d}.JPEG": label for n, label in enumerate(classes, start=1)}


def test_score_imagenet_json_and_text_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = _imagenet_labels()
    json_gt = _write_json(tmp_path / "val_labels.json", labels)
    text_gt = tmp_path / "val.txt"
    text_gt.write_text("".join(f"{name} {label}\n" for name, label in labels.items()))
    # Keys in three spellings of the same images; 4 of 6 right at top-1, 5 of 6 within the top 5.
    ranked = {}
    for n, (name, label) in enumerate(labels.items()):
        if n < 4:
            ranked[f"val/n01751748/{name}"] = [label, 1, 2, 3, 4]
        elif n == 4:
            ranked[name.removesuffix(".JPEG")] = [1, 2, label, 3, 4]
        else:
            ranked[name] = [1, 2, 3, 4, 5]
    predictions = _write_json(tmp_path / "predictions.json", ranked)
    for gt in (json_gt, text_gt):
        result = _score(capsys, "imagenet", "--predictions", predictions, "--annotations", gt)
        assert result["accuracy"] == pytest.approx(400 / 6) and result["top5_accuracy"] == pytest.approx(500 / 6)
        assert result["num_images"] == 6

    top1_only = _write_json(tmp_path / "top1.json", {name: label for name, label in labels.items()})
    assert _score(capsys, "imagenet", "--predictions", top1_only, "--annotations", text_gt) == {
        "accuracy": 100.0,
        "top5_accuracy": None,
        "num_images": 6,
    }


IMAGE_2, IMAGE_3 = "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({f"{IMAGE_2}.JPEG": [970, 1, 2]}, rf"1 images rank fewer than 5 classes .*'{IMAGE_2}'"),
        ({f"{IMAGE_2}.JPEG": [970, 1, 2, 1, 4]}, rf"{IMAGE_2}.JPEG: class 1 appears more than once"),
        ({f"{IMAGE_3}.JPEG": [-1, 1, 2, 3, 4]}, rf"{IMAGE_3}.JPEG: class -1 is outside 0..999"),
        ({f"{IMAGE_3}.JPEG": [5000, 1, 2, 3, 4]}, r"class 5000 is outside 0..999"),
        ({f"{IMAGE_3}.JPEG": 230}, r"1 images rank fewer than 5 classes"),  # one class among rankings
    ],
)
def test_score_imagenet_rejects_bad_rankings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message
) -> None:
    labels = _write_json(tmp_path / "labels.json", _imagenet_labels())
    ranked = {name: [label, *(c for c in range(5) if c != label)][:5] for name, label in _imagenet_labels().items()}
    predictions = _write_json(tmp_path / "predictions.json", ranked | change)
    err = _fail(capsys, "imagenet", "--predictions", predictions, "--annotations", labels)
    assert str(predictions) in err
    assert re.search(message, err), err


def test_score_imagenet_num_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = _write_json(tmp_path / "labels.json", {"a.JPEG": 0, "b.JPEG": 2})
    predictions = _write_json(tmp_path / "predictions.json", {"a": [0, 1, 2], "b": [1, 0, 2]})
    # Three classes: top-5 is undefined, rankings of all three classes are fine.
    result = _score(capsys, "imagenet", "--predictions", predictions, "--annotations", labels, "--num-classes", "3")
    assert result == {"accuracy": 50.0, "top5_accuracy": None, "num_images": 2}
    err = _fail(capsys, "imagenet", "--predictions", predictions, "--annotations", labels, "--num-classes", "2")
    assert str(predictions) in err and "a: class 2 is outside 0..1" in err
    top1 = _write_json(tmp_path / "top1.json", {"a": 0, "b": 1})
    err = _fail(capsys, "imagenet", "--predictions", top1, "--annotations", labels, "--num-classes", "2")
    assert str(labels) in err and "b.JPEG: class 2 is outside 0..1" in err


def test_score_imagenet_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devkit = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    devkit.write_text("490\n361\n")
    predictions = _write_json(tmp_path / "predictions.json", {"ILSVRC2012_val_00000001.JPEG": 1})
    err = _fail(capsys, "imagenet", "--predictions", predictions, "--annotations", devkit)
    assert str(devkit) in err and "one column only" in err and "meta.mat" in err

    labels = _write_json(tmp_path / "labels.json", _imagenet_labels())
    err = _fail(capsys, "imagenet", "--predictions", predictions, "--annotations", labels)
    assert str(predictions) in err and "5 images without a prediction" in err

    err = _fail(capsys, "imagenet", "--predictions", tmp_path / "absent.json", "--annotations", labels)
    assert "absent.json" in err and "cannot read file" in err


def test_score_files_rejects_unknown_task_and_stray_questions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'coco'"):
        score_files("coco", tmp_path / "p.json", tmp_path / "a.json")
    with pytest.raises(ValueError, match="only used by vqav2"):
        score_files("nlvr2", tmp_path / "p.json", tmp_path / "a.json", questions=tmp_path / "q.json")
    with pytest.raises(ValueError, match="vqa_eval_revision is only used by vqav2, not imagenet"):
        score_files("imagenet", tmp_path / "p.json", tmp_path / "a.json", vqa_eval_revision="2017")
    with pytest.raises(ValueError, match="unknown vqaEval revision '2019'"):
        score_files("vqav2", tmp_path / "p.json", tmp_path / "a.json", vqa_eval_revision="2019")
    with pytest.raises(ScoreFileError, match="p.json: cannot read file"):
        score_files("nlvr2", tmp_path / "p.json", _nlvr2_gt(tmp_path))


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    annotations, questions = _vqa_files(tmp_path)
    predictions = _vqa_predictions(tmp_path, {9000: "two", 42000: "Yes.", 42001: "The broccoli!"})
    command = [sys.executable, "-m", "flows.cli", "score", "vqav2", "--predictions", str(predictions)]
    command += ["--annotations", str(annotations), "--questions", str(questions)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["overall"] == 50.0
