"""`beit3 score coco_retrieval | flickr30k_retrieval`: score matrices with ids against Karpathy split files."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main

# Spec section 10f: rows = test images 0-2, columns = their captions, text -> image [0, 0, 1, 1, 2, 2].
# TR@1 2/3, IR@1 5/6, every R@5 / R@10 100 (clamped), mean 91.6667 (worked by hand in the spec).
SPEC_SCORES = [
    [0.9, 0.1, 0.8, 0.0, 0.0, 0.2],
    [0.7, 0.05, 0.3, 0.6, 0.0, 0.0],
    [0.0, 0.0, 0.1, 0.0, 0.5, 0.4],
]
SPEC_METRICS = {"tr_r1": 200 / 3, "ir_r1": 500 / 6, "tr_r5": 100.0, "tr_r10": 100.0, "ir_r5": 100.0}
SPEC_METRICS |= {"ir_r10": 100.0, "average_score": 91.66666666666667}
SPLITS = ["train", "restval", "val", "test", "test", "test"]  # test images are imgid 3, 4, 5
TEST_IMGIDS, TEST_SENTIDS = [3, 4, 5], [6, 7, 8, 9, 10, 11]


def _karpathy(tmp_path: Path, coco: bool) -> Path:
    images = []
    for imgid, split in enumerate(SPLITS):
        sentences = [{"raw": f"caption {2 * imgid + j}", "imgid": imgid, "sentid": 2 * imgid + j} for j in (0, 1)]
        entry = {"imgid": imgid, "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
        if coco:
            entry |= {
                "filepath": "val2014",
                "filename": f"COCO_val2014_{9000 + imgid:012d}.jpg",
                "cocoid": 9000 + imgid,
            }
        else:
            entry |= {"filename": f"{1000092795 + imgid}.jpg"}
        images.append(entry)
    path = tmp_path / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    path.write_text(json.dumps({"dataset": "coco" if coco else "flickr30k", "images": images}))
    return path


def _score(capsys: pytest.CaptureFixture[str], task: str, predictions: Path, annotations: Path, *extra: str) -> dict:
    assert main(["score", task, "--predictions", str(predictions), "--annotations", str(annotations), *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _fail(capsys: pytest.CaptureFixture[str], task: str, predictions: Path, annotations: Path) -> str:
    assert main(["score", task, "--predictions", str(predictions), "--annotations", str(annotations)]) == 2
    return capsys.readouterr().err


def _npz(path: Path, scores, image_ids, text_ids) -> Path:
    np.savez(path, scores=np.asarray(scores), image_ids=np.asarray(image_ids), text_ids=np.asarray(text_ids))
    return path


def _assert_spec(result: dict) -> None:
    assert {key: result[key] for key in SPEC_METRICS} == pytest.approx(SPEC_METRICS)
    assert (result["num_images"], result["num_texts"], result["split"]) == (3, 6, "test")


def test_flickr_json_and_npz_in_any_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = _karpathy(tmp_path, coco=False)
    as_json = tmp_path / "scores.json"
    as_json.write_text(json.dumps({"image_ids": TEST_IMGIDS, "text_ids": TEST_SENTIDS, "scores": SPEC_SCORES}))
    _assert_spec(_score(capsys, "flickr30k_retrieval", as_json, annotations))
    # Rows named by file name, rows and columns shuffled: same numbers.
    rows, cols = [2, 0, 1], [5, 3, 0, 4, 1, 2]
    scores = np.asarray(SPEC_SCORES)[rows][:, cols]
    names = [f"{1000092795 + TEST_IMGIDS[r]}.jpg" for r in rows]
    shuffled = _npz(tmp_path / "scores.npz", scores, names, [TEST_SENTIDS[c] for c in cols])
    _assert_spec(_score(capsys, "flickr30k_retrieval", shuffled, annotations))


def test_coco_ids_and_another_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = _karpathy(tmp_path, coco=True)
    scores = _npz(tmp_path / "scores.npz", SPEC_SCORES, [9003, 9004, 9005], TEST_SENTIDS)
    _assert_spec(_score(capsys, "coco_retrieval", scores, annotations))
    # The Karpathy "train" split is train + restval: images 0 and 1, sentids 0-3; perfect scores -> 100.
    train = _npz(tmp_path / "train.npz", np.repeat(np.eye(2), 2, axis=1), [9000, 9001], [0, 1, 2, 3])
    result = _score(capsys, "coco_retrieval", train, annotations, "--split", "train")
    assert result["average_score"] == 100.0 and (result["num_images"], result["split"]) == (2, "train")


def test_ties_count_against_the_correct_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # All scores equal. An image's 4 wrong captions tie with its 2 own ones and rank first: TR@1 = 0, while at
    # position 5 comes an own caption: TR@5 = 100. A caption's 2 wrong images rank first: IR@1 = 0, IR@5 = 100.
    annotations = _karpathy(tmp_path, coco=False)
    flat = _npz(tmp_path / "flat.npz", np.zeros((3, 6)), TEST_IMGIDS, TEST_SENTIDS)
    result = _score(capsys, "flickr30k_retrieval", flat, annotations)
    assert (result["tr_r1"], result["tr_r5"], result["ir_r1"], result["ir_r5"]) == (0.0, 100.0, 0.0, 100.0)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"scores": np.zeros((3, 5))}, r"'scores' has shape \(3, 5\), expected \(3, 6\)"),
        ({"image_ids": [3, 4, 1]}, r"image id 1 is not in split 'test'"),
        ({"text_ids": [6, 7, 8, 9, 10, 1]}, r"text id 1 is not in split 'test'"),
        ({"image_ids": [3, 4, 3]}, r"'image_ids' repeats 3"),
        ({"scores": np.where(np.eye(3, 6) > 0, np.nan, 0.0)}, r"3 scores are not finite, e.g. nan for image 3, text 6"),
        ({"image_ids": [3, 4], "scores": np.zeros((2, 6))}, r"1 of the 3 images of split 'test' .* missing"),
        ({"text_ids": [6, 7, 8, 9, 10], "scores": np.zeros((3, 5))}, r"1 of the 6 texts .* \(e.g. sentids 11\)"),
        ({"image_ids": [3.0, 4.0, 5.0]}, r"'image_ids' holds 3.0; ids must be integers or strings"),
    ],
)
def test_bad_matrix_names_the_file_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict, message: str
) -> None:
    annotations = _karpathy(tmp_path, coco=False)
    values = {"scores": np.asarray(SPEC_SCORES), "image_ids": TEST_IMGIDS, "text_ids": TEST_SENTIDS} | arrays
    predictions = _npz(tmp_path / "bad.npz", values["scores"], values["image_ids"], values["text_ids"])
    err = _fail(capsys, "flickr30k_retrieval", predictions, annotations)
    assert f"{predictions}: " in err
    assert re.search(message, err), err


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = _karpathy(tmp_path, coco=False)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, scores=np.zeros((3, 6)), image_ids=np.array([3, 4, {}], dtype=object), text_ids=TEST_SENTIDS)
    err = _fail(capsys, "flickr30k_retrieval", pickled, annotations)
    assert str(pickled) in err and "without pickle" in err
    text = tmp_path / "scores.txt"
    text.write_text("0.1 0.2")
    assert "expected a .npz or .json score matrix" in _fail(capsys, "flickr30k_retrieval", text, annotations)
    mixed = tmp_path / "mixed.json"  # an id and a file name of the same image
    mixed.write_text(
        json.dumps({"image_ids": [3, 4, "1000092798.jpg"], "text_ids": TEST_SENTIDS, "scores": SPEC_SCORES})
    )
    err = _fail(capsys, "flickr30k_retrieval", mixed, annotations)
    assert f"{mixed}: image ids 3 and '1000092798.jpg' both name 1000092798.jpg" in err
    no_ids = tmp_path / "no_ids.json"
    no_ids.write_text(json.dumps({"scores": SPEC_SCORES}))
    assert "lacks 'image_ids', 'text_ids'" in _fail(capsys, "flickr30k_retrieval", no_ids, annotations)
    # Annotations without a test split, and a Karpathy entry without its id field.
    good = _npz(tmp_path / "scores.npz", SPEC_SCORES, TEST_IMGIDS, TEST_SENTIDS)
    data = json.loads(annotations.read_text())
    for image in data["images"]:
        image["split"] = "train" if image["split"] == "test" else image["split"]
    no_test = tmp_path / "no_test.json"
    no_test.write_text(json.dumps(data))
    err = _fail(capsys, "flickr30k_retrieval", good, no_test)
    assert f"{no_test}: no image of split 'test' (splits present: restval, train, val)" in err
    err = _fail(capsys, "coco_retrieval", good, annotations)  # Flickr30K file read as COCO: no cocoid
    assert f"{annotations}: image 0 lacks 'cocoid'" in err


def test_ragged_or_non_numeric_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = _karpathy(tmp_path, coco=False)
    for scores, message in ((SPEC_SCORES[:2] + [[0.1]], "'scores' is not a matrix"), ([["a"] * 6] * 3, "dtype <U1")):
        path = tmp_path / "scores.json"
        path.write_text(json.dumps({"image_ids": TEST_IMGIDS, "text_ids": TEST_SENTIDS, "scores": scores}))
        err = _fail(capsys, "flickr30k_retrieval", path, annotations)
        assert f"{path}: " in err and message in err, err
