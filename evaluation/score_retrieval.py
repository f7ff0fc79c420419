"""Scores image-text retrieval outputs made elsewhere: a score matrix with its ids, against a Karpathy split.

Input (`coco_retrieval`, `flickr30k_retrieval`; the zero-shot units read the same files):

- predictions: the similarity of every image of the split to every caption of the split, higher = more similar,
  with the ids of its rows and columns, as `.npz` (arrays `scores` [num_images, num_texts] float, `image_ids`
  [num_images], `text_ids` [num_texts]; read without pickle) or `.json` ({"image_ids": [...], "text_ids":
  [...], "scores": [[...], ...]}, one inner list per image). Image ids are the Karpathy `cocoid` (COCO) or
  `imgid` (Flickr30K) as integers, or the image `filename` as a string; text ids are the Karpathy `sentid`.
  Rows and columns may come in any order; every image and caption of the split must appear exactly once.
- annotations: the Karpathy file (`dataset_coco.json` / `dataset_flickr30k.json`); its images with `split` ==
  "test" (or the split asked for; "train" means train + restval) are scored.

Output: `tr_r1`, `tr_r5`, `tr_r10`, `ir_r1`, `ir_r5`, `ir_r10` (percent), `average_score` (their mean),
`num_images`, `num_texts`, `split`. Ties count against the correct item (`evaluation.metrics.retrieval`).
"""

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics.ids import sample_ids
from evaluation.metrics.retrieval import retrieval_recall
from evaluation.score_io import ScoreFileError, read_json, records_under, require_fields
from evaluation.tasks.karpathy import KARPATHY_SPLITS

# Task name -> Karpathy dataset whose id convention it reads.
RETRIEVAL_BENCHMARKS = {"coco_retrieval": "coco", "flickr30k_retrieval": "flickr30k"}
_IMAGE_ID_FIELD = {"coco": "cocoid", "flickr30k": "imgid"}


def score_retrieval(predictions: Path, annotations: Path, benchmark: str, split: str = "test") -> dict[str, Any]:
    """TR/IR recall at 1/5/10 of a score matrix file against the Karpathy split file.

    Args:
        predictions: `.npz` or `.json` score matrix with its image and text ids (module docstring).
        annotations: Karpathy JSON of `benchmark`.
        benchmark: "coco" or "flickr30k" (which image id field to read).
        split: Karpathy split the matrix covers.

    Returns:
        The six recalls and their mean in percent, `num_images`, `num_texts` and `split`.

    Raises:
        ScoreFileError: For an unreadable or malformed file, ids that are unknown, repeated or missing, a shape
            mismatch, or a non-finite score.
    """
    image_names, text_image = _read_karpathy_split(annotations, benchmark, split)
    scores, image_ids, text_ids = _read_score_matrix(predictions)
    rows = [_lookup(predictions, image_names, image_id, "image", split) for image_id in image_ids]
    images_of_texts = [_lookup(predictions, text_image, text_id, "text", split) for text_id in text_ids]
    row_of_image: dict[str, int] = {}
    for row, name in enumerate(rows):
        if row_of_image.setdefault(name, row) != row:  # an id and a file name of the same image
            first = image_ids[row_of_image[name]]
            raise ScoreFileError(predictions, f"image ids {first!r} and {image_ids[row]!r} both name {name}")
    _check_complete(predictions, annotations, set(rows), set(image_names.values()), "images", split)
    _check_complete(predictions, annotations, set(text_ids), set(text_image), "texts", split)
    text_to_row = torch.tensor([row_of_image[name] for name in images_of_texts])
    metrics = retrieval_recall(torch.from_numpy(scores), text_to_row)
    return metrics | {"num_images": len(rows), "num_texts": len(text_ids), "split": split}


def _read_karpathy_split(path: Path, benchmark: str, split: str) -> tuple[dict[Any, str], dict[Any, str]]:
    """(image id or file name -> file name, sentid -> file name of its image) over the images of one split."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; expected one of {', '.join(KARPATHY_SPLITS)}")
    id_field = _IMAGE_ID_FIELD[benchmark]
    entries = records_under(path, read_json(path), key="images")
    image_names: dict[Any, str] = {}
    text_image: dict[Any, str] = {}
    for i, entry in enumerate(entries):
        require_fields(path, entry, ("split", "filename", "sentences", id_field), i, what="image")
        if entry["split"] not in KARPATHY_SPLITS[split]:
            continue
        name, sentences = entry["filename"], entry["sentences"]
        if not isinstance(name, str) or not isinstance(entry[id_field], int):
            raise ScoreFileError(path, f"image {i}: 'filename' must be a string and {id_field!r} an integer")
        for key in (entry[id_field], name):
            if key in image_names:
                raise ScoreFileError(path, f"image {i}: {key!r} names two images of split {split!r}")
            image_names[key] = name
        if not isinstance(sentences, list) or not sentences:
            raise ScoreFileError(path, f"image {i} ({name}): 'sentences' must be a non-empty list")
        for j, sentence in enumerate(sentences):
            require_fields(path, sentence, ("sentid",), j, what=f"image {i} sentence")
            if sentence["sentid"] in text_image:
                raise ScoreFileError(path, f"image {i} ({name}): sentid {sentence['sentid']!r} appears twice")
            text_image[sentence["sentid"]] = name
    if not image_names:
        present = sorted({str(entry.get("split")) for entry in entries})
        raise ScoreFileError(path, f"no image of split {split!r} (splits present: {', '.join(present)})")
    return image_names, text_image


def _read_score_matrix(path: Path) -> tuple[np.ndarray, list[Any], list[Any]]:
    """(scores [num_images, num_texts] float, image ids, text ids), checked for shape and finiteness."""
    if path.suffix.lower() == ".npz":
        arrays = _load_npz(path)
    elif path.suffix.lower() == ".json":
        data = read_json(path)
        if not isinstance(data, dict):
            raise ScoreFileError(path, "expected a JSON object with 'scores', 'image_ids' and 'text_ids'")
        arrays = data
    else:
        raise ScoreFileError(path, "expected a .npz or .json score matrix")
    missing = [key for key in ("scores", "image_ids", "text_ids") if key not in arrays]
    if missing:
        raise ScoreFileError(path, f"lacks {', '.join(repr(key) for key in missing)}")
    image_ids, text_ids = _ids(path, arrays["image_ids"], "image_ids"), _ids(path, arrays["text_ids"], "text_ids")
    try:
        scores = np.asarray(arrays["scores"])
    except ValueError as error:  # ragged JSON rows
        raise ScoreFileError(path, f"'scores' is not a matrix ({error})") from error
    if scores.dtype.kind not in "fiu":
        raise ScoreFileError(path, f"'scores' must hold numbers, got dtype {scores.dtype}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)  # float32 stays float32: a COCO 5k x 25k matrix is 500 MB already
    if scores.shape != (len(image_ids), len(text_ids)):
        raise ScoreFileError(
            path, f"'scores' has shape {scores.shape}, expected ({len(image_ids)}, {len(text_ids)}) from the ids"
        )
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        row, col = bad[0]
        raise ScoreFileError(
            path,
            f"{len(bad)} scores are not finite, e.g. {scores[row, col]} for image {image_ids[row]!r}, "
            f"text {text_ids[col]!r}",
        )
    return scores, image_ids, text_ids


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except OSError as error:
        raise ScoreFileError(path, f"cannot read file ({error.strerror or error})") from error
    except (ValueError, zipfile.BadZipFile) as error:  # not an npz, or object arrays that need pickle
        raise ScoreFileError(path, f"not a readable .npz without pickle ({error})") from error


def _ids(path: Path, values: Any, name: str) -> list[Any]:
    """Ids as a list of Python ints or strings, with no repeats."""
    values = values.tolist() if isinstance(values, np.ndarray) else values
    if not isinstance(values, list) or not values:
        raise ScoreFileError(path, f"{name!r} must be a non-empty 1-D list of ids")
    bad = [v for v in values if not isinstance(v, int | str) or isinstance(v, bool)]
    if bad:
        raise ScoreFileError(path, f"{name!r} holds {bad[0]!r}; ids must be integers or strings")
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ScoreFileError(path, f"{name!r} repeats {value!r}")
        seen.add(value)
    return values


def _lookup(path: Path, index: dict[Any, str], key: Any, what: str, split: str) -> str:
    if key not in index:
        fields = "sentid values" if what == "text" else "Karpathy image ids (cocoid / imgid) or file names"
        raise ScoreFileError(path, f"{what} id {key!r} is not in split {split!r} of the annotations ({fields})")
    return index[key]


def _check_complete(path: Path, annotations: Path, given: set[Any], expected: set[Any], what: str, split: str) -> None:
    """Every image / caption of the split must be scored: recall over a subset is a different number."""
    missing = expected - given
    if missing:
        raise ScoreFileError(
            path,
            f"{len(missing)} of the {len(expected)} {what} of split {split!r} in {annotations} are missing "
            f"(e.g. {'file names' if what == 'images' else 'sentids'} {sample_ids(missing)})",
        )
