"""Tiny benchmarks in the official on-disk formats whose answers can be read off the pixels.

Every image is a two-band picture: the top half in one colour, the bottom half in another (or the same one for
single-colour images), each colour jittered per image and with per-pixel noise, so no two files are equal and
held-out images are new ones. The answer of every task is a function of the two colours:

- ImageNet: class folders named after the colour of a single-colour image.
- VQAv2: "What colour is the top?" / "... the bottom?", answered with that band's colour (10 equal answers).
- NLVR2: one sentence, "Both images are red.", true when both single-colour images are red (half the pairs;
  the other half are drawn from the remaining colour pairs, so each image must be checked).
- COCO (Karpathy JSON, captioning and retrieval): one caption per image, "<top> above <bottom>.", with
  distinct colours, so every test image has its own caption.

The layouts are those the task adapters document (`evaluation.tasks.imagenet`, `vqav2`, `nlvr2`, `karpathy`).
"""

import io
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 205, 40)}
BOTH_RED = "Both images are red."
VQA_QUESTIONS = {"top": "What colour is the top?", "bottom": "What colour is the bottom?"}


def caption_of(top: str, bottom: str) -> str:
    return f"{top} above {bottom}."


def sentences() -> list[str]:
    """Every text the benchmarks hold (for training a SentencePiece model)."""
    texts = [BOTH_RED, *VQA_QUESTIONS.values()]
    texts += [caption_of(a, b) for a, b in itertools.permutations(COLOURS, 2)]
    return texts + list(COLOURS)


def band_image(top: str, bottom: str, rng: np.random.Generator, size: int = 40, fmt: str = "JPEG") -> bytes:
    """A `size` x `size` picture: top half `top`, bottom half `bottom`, jittered (+-25) and noisy (+-12)."""
    pixels = np.empty((size, size, 3), dtype=np.float64)
    for rows, name in ((slice(0, size // 2), top), (slice(size // 2, size), bottom)):
        pixels[rows] = np.asarray(COLOURS[name]) + rng.uniform(-25, 25, size=3)
    pixels += rng.uniform(-12, 12, size=pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def _cycle(count: int, values: list, rng: np.random.Generator) -> list:
    """`count` values, each as often as the others (+-1), in a random order."""
    picked = (values * (count // len(values) + 1))[:count]
    return [picked[i] for i in rng.permutation(count)]


def write_imagenet(root: Path, per_class: tuple[int, int], seed: int) -> Path:
    """`train/<colour>/*.JPEG` and `val/<colour>/*.JPEG` with `per_class` = (train, val) images per colour."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for colour in COLOURS:
            for index in range(count):
                _write(root / split / colour / f"{split}_{colour}_{index:04d}.JPEG", band_image(colour, colour, rng))
    return root


def write_vqav2(root: Path, num_images: tuple[int, int], seed: int) -> dict:
    """train2014 / val2014 questions, annotations and images; returns the dataset options (every val image is
    in the held-out "val" split)."""
    rng = np.random.default_rng(seed)
    pairs = list(itertools.product(COLOURS, repeat=2))
    image_id = 0
    for subtype, count in zip(("train2014", "val2014"), num_images, strict=True):
        questions, annotations = [], []
        for top, bottom in _cycle(count, pairs, rng):
            image_id += 1
            _write(root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", band_image(top, bottom, rng))
            for index, (band, answer) in enumerate((("top", top), ("bottom", bottom))):
                question_id = image_id * 1000 + index
                questions.append({"image_id": image_id, "question": VQA_QUESTIONS[band], "question_id": question_id})
                answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
                annotations.append(
                    {"question_id": question_id, "image_id": image_id, "question_type": "what color is the"}
                    | {"answer_type": "other", "multiple_choice_answer": answer, "answers": answers}
                )
        common = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco"}
        _write(
            root / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
            json.dumps(common | {"task_type": "Open-Ended", "questions": questions}),
        )
        _write(root / f"v2_mscoco_{subtype}_annotations.json", json.dumps(common | {"annotations": annotations}))
    return {"min_answer_count": 1, "rest_val_images": num_images[1]}


def write_nlvr2(root: Path, num_pairs: dict[str, int], seed: int) -> Path:
    """`nlvr2/data/{train,dev,test1}.json` and the image pairs; half the pairs of each split are both red."""
    rng = np.random.default_rng(seed)
    names = {"train": "train", "val": "dev", "test": "test1"}
    other_pairs = [pair for pair in itertools.product(COLOURS, repeat=2) if pair != ("red", "red")]
    for split, count in num_pairs.items():
        name, lines = names[split], []
        for pair_id, both_red in enumerate(_cycle(count, [True, False], rng)):
            left, right = ("red", "red") if both_red else other_pairs[rng.integers(len(other_pairs))]
            identifier = f"{name}-{pair_id}-0-0"
            folder = f"images/train/{pair_id % 10}" if name == "train" else name
            for side, colour in enumerate((left, right)):
                _write(root / folder / f"{name}-{pair_id}-0-img{side}.png", band_image(colour, colour, rng, fmt="PNG"))
            line = {"identifier": identifier, "sentence": BOTH_RED, "label": str(both_red)}
            lines.append(json.dumps(line | ({"directory": pair_id % 10} if name == "train" else {})))
        _write(root / "nlvr2" / "data" / f"{name}.json", "\n".join(lines) + "\n")
    return root


def write_coco(root: Path, num_images: dict[str, int], seed: int) -> Path:
    """Karpathy `dataset_coco.json` with `train2014/` (train) and `val2014/` (val, test) images.

    Each split cycles through the ordered pairs of distinct colours, so a test split of at most 12 images has
    one caption per image and no two alike.
    """
    rng = np.random.default_rng(seed)
    pairs = list(itertools.permutations(COLOURS, 2))
    images = []
    for split, count in num_images.items():
        for top, bottom in _cycle(count, pairs, rng):
            imgid = len(images)
            filepath = "train2014" if split == "train" else "val2014"
            filename = f"COCO_{filepath}_{imgid + 1:012d}.jpg"
            _write(root / filepath / filename, band_image(top, bottom, rng))
            raw = caption_of(top, bottom)
            sentence = {"raw": raw, "tokens": raw.rstrip(".").split(), "imgid": imgid, "sentid": imgid}
            images.append(
                {"filepath": filepath, "filename": filename, "imgid": imgid, "cocoid": imgid + 1, "split": split}
                | {"sentids": [imgid], "sentences": [sentence]}
            )
    _write(root / "dataset_coco.json", json.dumps({"dataset": "coco", "images": images}))
    return root
