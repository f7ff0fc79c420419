"""Miniature benchmarks in the OFFICIAL file formats, built from the offline demo corpus.

The demo corpus (`preprocessing.demo_data`, `python -m flows.cli demo-data`) holds Tux Paint stamps with a
caption each (webdataset tars), rendered emoji with their Unicode names (JSONL pairs) and Fashion-MNIST class
folders. This module turns them into small data sets that the task adapters of `evaluation.tasks` read with
the same code paths as the real benchmarks:

- `imagenet/`: `train/<class>/`, `val/<class>/` class folders, from Fashion-MNIST (seeded per-class val split).
- `coco/`: Karpathy `dataset_coco.json` + `train2014/`, `val2014/` from Tux Paint stamps and captions, and NoCaps
  `nocaps_val_4500_captions.json` + `val/`, `nocaps_test_image_info.json` + `test/` from held-out stamps and emoji
  (pictures the pretraining and the COCO-style captioner never saw), each image's domain
  given by how new its caption's words are to the COCO-style training captions, as NoCaps' domains are given by
  how new its objects are to COCO.
- `flickr30k/`: Karpathy `dataset_flickr30k.json` + `flickr30k-images/`, from the emoji and their names.
- `vqav2/`: `v2_OpenEnded_mscoco_{train2014,val2014}_questions.json`, `v2_mscoco_*_annotations.json` and COCO
  image names, from templates over the Tux Paint stamps: the stamp's kind, a yes/no question on a kind and the
  object's colour (a seeded half of the captioned stamps in val2014).
- `nlvr2/`: `nlvr2/data/{train,dev,test1}.json`, `images/train/<dir>/`, `dev/`, `test1/`, from templates over
  Fashion-MNIST pairs of five kinds of item (tops, trousers, dresses, shoes, bags): whether the left, the right,
  both or neither picture shows a shoe (`NLVR2_NAMED_KINDS`).

The Karpathy test images of `coco/` and `flickr30k/` and the NoCaps images come from the demo corpus's
`heldout/` stamps and emoji, which the demo pretraining corpus does not contain, so the zero-shot units (11, 12)
evaluated on them are zero-shot; without a `heldout/` folder (older corpora) they come from the corpus and the
files say so (`info.test_held_out: false`, NoCaps `info.held_out: false`). NoCaps takes the corpus's
`heldout/nocaps/` stamps when it holds them out; otherwise the held-out stamps the COCO-style test split leaves over
(new pictures of captions the corpus has: the test split needs new captions too, NoCaps does not) and the held-out
emoji the Flickr-style one leaves over; without any, corpus stamps.

Nothing here is a real benchmark: one caption per image (COCO has ~5, NoCaps 10), NoCaps domains come from
caption words rather than object classes (marked `synthetic`), VQA questions and NLVR2 statements come from templates
(marked `template_generated: true`). The build is deterministic for a seed (sorted inputs, one seeded
generator, fixed image encoding) and idempotent: `miniature_manifest.json`, written last, records the
parameters, and a rebuild with the same ones is skipped. Tux Paint is GPL-2: the output must not be committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.leakage import MAX_ASPECT_DIFFERENCE, MAX_MEAN_DIFFERENCE, image_fingerprint, normalise_caption
from preprocessing.demo_data import FASHION_KINDS

logger = logging.getLogger(__name__)

MANIFEST = "miniature_manifest.json"
VERSION = 12  # 12: NoCaps also takes the held-out stamps the COCO-style test split leaves over
HELDOUT, NOCAPS = "heldout", "nocaps"  # preprocessing.demo_data.HELDOUT, NOCAPS
TASK_FOLDERS = ("imagenet", "coco", "flickr30k", "vqav2", "nlvr2")
_IMAGE_SIDE = 96  # long side of written JPEGs: small files, still larger than test models' inputs


def build_miniature_benchmarks(
    demo_root: str | Path,
    out_root: str | Path,
    seed: int = 0,
    *,
    num_caption_images: int = 500,
    num_test_images: int | None = 200,
    num_nocaps_images: int = 200,
    images_per_class: int = 100,
    num_nlvr2_sets: tuple[int, int, int] = (300, 30, 100),
    force: bool = False,
) -> dict[str, Any]:
    """Builds (or reuses) the miniature benchmarks under `out_root`.

    Args:
        demo_root: The demo corpus (`tuxpaint/*.tar`, `emoji/pairs.jsonl`, `fashion_mnist/<class>/`).
        out_root: Output folder; only the `TASK_FOLDERS` and the manifest inside it are written.
        seed: Seed of every random choice.
        num_caption_images: Tux Paint stamps in the COCO-style Karpathy file (and emoji in the Flickr one).
        num_test_images: Karpathy test images of both (then val and restval take 1/12 each); None = 1/6, as
            val. The demo's 200 (of 500) give test sets whose chance-level standard errors are small next to
            what a fine-tuned tiny model reaches; fewer held-out items than that are used as they are.
        num_nocaps_images: At most this many images in the NoCaps-style files (4/5 val, 1/5 test): the
            `heldout/nocaps/` stamps whose pictures no corpus item nearly repeats (`DemoLimits
            .nocaps_holdout_every`; 51 of the demo corpus's 52); without them, the held-out stamps the COCO-style
            test split leaves over, then the held-out emoji the Flickr-style one leaves over, or else corpus
            stamps.
        images_per_class: Fashion-MNIST images per class in the ImageNet-style folders (1/5 go to val).
        num_nlvr2_sets: Sentence sets (two image pairs each) for train, dev and test1; test1 draws its images
            from 1/5 of each class's files that train and dev never use.
        force: Rebuild even when the manifest matches.

    Returns:
        `{"out_root", "built", "tasks"}`; `tasks` maps each `evaluation.tasks` name to `{"root", "options"}`
        (dataset options the miniature needs, e.g. a VQA answer threshold of 1) and `counts`.
    """
    demo_root, out_root = Path(demo_root), Path(out_root)
    params = {
        "version": VERSION,
        "seed": seed,
        "num_caption_images": num_caption_images,
        "num_test_images": num_test_images,
        "num_nocaps_images": num_nocaps_images,
        "images_per_class": images_per_class,
        "num_nlvr2_sets": list(num_nlvr2_sets),
        "demo": _fingerprint(demo_root),
    }
    manifest = _read_manifest(out_root)
    if not force and manifest and manifest["parameters"] == params:
        if all((out_root / folder).is_dir() for folder in TASK_FOLDERS):
            return {"out_root": out_root, "built": False, "tasks": _task_entries(out_root, manifest["summary"])}

    (out_root / MANIFEST).unlink(missing_ok=True)  # a build that dies midway must not look finished
    for folder in TASK_FOLDERS:
        shutil.rmtree(out_root / folder, ignore_errors=True)
    out_root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stamps = _read_tuxpaint(demo_root / "tuxpaint")
    rng.shuffle(stamps)
    # The emoji pairs are pretraining pairs too ("Teddy bear." is a stamp's caption and an emoji's name).
    emoji = _emoji_rows(demo_root / "emoji", random.Random(seed))
    # Held-out stamps whose pictures are new to the corpus; those whose caption is new too can be test images of
    # the COCO-style split (zero-shot retrieval checks both), the rest are left to NoCaps, which needs new
    # pictures only ("A cow." for a cow drawn otherwise is an in-domain NoCaps image).
    held_pictures = _new_pictures(_read_tuxpaint(demo_root / HELDOUT / "tuxpaint"), stamps + emoji)
    held_stamps = _captions_unseen(held_pictures, stamps + emoji)
    rng.shuffle(held_stamps)
    # Without an explicit test size: 1/6 test and 1/6 val, test images held out only when enough are.
    legacy = num_test_images is None
    num_test = _num_test(num_caption_images) if legacy else num_test_images
    num_val = num_test if legacy else max(2, num_caption_images // 12)
    coco_stamps, coco_test, coco_held = _test_first(stamps, held_stamps, num_caption_images, num_test, legacy)
    used = len(coco_stamps) - (coco_test if coco_held else 0)
    summary = {
        "imagenet": _build_imagenet(demo_root / "fashion_mnist", out_root / "imagenet", images_per_class, rng),
        "coco": _build_coco(coco_stamps, out_root / "coco", (coco_test, num_val), coco_held),
    }
    flickr, spare_emoji = _build_flickr(
        demo_root, out_root / "flickr30k", num_caption_images, (num_test, num_val), legacy, rng
    )
    # NoCaps pictures must be new to the pretraining too: the corpus's NoCaps stamps when it holds them out;
    # otherwise the held-out stamps the COCO-style test split leaves over (mostly captions the corpus has: the
    # in-domain images) and the held-out emoji the Flickr-style test split leaves over (names the COCO-style
    # captions lack: near and out of domain); without any, corpus stamps (the files say so).
    nocaps_stamps = _new_pictures(_read_tuxpaint(demo_root / HELDOUT / NOCAPS), stamps + emoji)
    coco_test_stamps = {item["stamp"] for item in coco_stamps[:coco_test]} if coco_held else set()
    spare_stamps = [item for item in held_pictures if item["stamp"] not in coco_test_stamps]
    if nocaps_stamps or spare_stamps or spare_emoji:
        nocaps_items, nocaps_held = (nocaps_stamps or spare_stamps + spare_emoji)[:num_nocaps_images], True
    else:
        nocaps_items, nocaps_held = stamps[used : used + num_nocaps_images], False
    coco_splits = _karpathy_splits(len(coco_stamps), coco_test, num_val)
    coco_training = [
        s["caption"] for s, split in zip(coco_stamps, coco_splits, strict=True) if split in ("train", "restval")
    ]
    summary |= {
        "nocaps": _build_nocaps(nocaps_items, out_root / "coco", nocaps_held, coco_training),
        "flickr30k": flickr,
        "vqav2": _build_vqa(out_root / "coco", out_root / "vqav2", rng),
        "nlvr2": _build_nlvr2(demo_root / "fashion_mnist", out_root / "nlvr2", num_nlvr2_sets, rng),
    }
    _write_text(out_root / MANIFEST, json.dumps({"parameters": params, "summary": summary}, indent=2) + "\n")
    return {"out_root": out_root, "built": True, "tasks": _task_entries(out_root, summary)}


def _task_entries(out_root: Path, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    vqa_options = {"min_answer_count": 1, "rest_val_images": summary["vqav2"]["rest_val_images"]}
    entries = {
        "imagenet": ("imagenet", {}, summary["imagenet"]),
        "coco_captioning": ("coco", {}, summary["coco"]),
        "nocaps": ("coco", {}, summary["nocaps"]),
        "coco_retrieval": ("coco", {}, summary["coco"]),
        "flickr30k_retrieval": ("flickr30k", {}, summary["flickr30k"]),
        "vqav2": ("vqav2", vqa_options, summary["vqav2"]),
        "nlvr2": ("nlvr2", {}, summary["nlvr2"]),
    }
    return {
        name: {"root": out_root / folder, "options": options, "counts": counts}
        for name, (folder, options, counts) in entries.items()
    }


# ---- demo corpus readers ---------------------------------------------------------------------------------


def _fingerprint(demo_root: Path) -> str:
    """Hash of the demo corpus's manifest, or of its file names and sizes when there is none."""
    manifest = demo_root / "demo_manifest.json"
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    listing = sorted(
        f"{p.relative_to(demo_root).as_posix()}:{p.stat().st_size}" for p in demo_root.rglob("*") if p.is_file()
    )
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def _read_tuxpaint(folder: Path) -> list[dict[str, Any]]:
    """Stamps with a non-empty caption, in key order: {"key", "caption", "stamp", "png"}."""
    samples: dict[str, dict[str, Any]] = defaultdict(dict)
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]  # regular file
                if ext == "json":
                    samples[key] |= {k: v for k, v in json.loads(data).items() if k in ("caption", "stamp")}
                elif ext == "png":
                    samples[key]["png"] = data
                elif ext == "txt":
                    samples[key].setdefault("caption", data.decode("utf-8", "replace").strip())
    stamps = []
    for key in sorted(samples):
        sample = samples[key]
        if sample.get("png") and sample.get("caption", "").strip():
            stamps.append({"key": key, "stamp": sample.get("stamp", key), **sample})
    return stamps


def _jpeg(data: bytes) -> bytes:
    """Any image bytes -> small RGB JPEG; transparency is composited on white (stamps are RGBA)."""
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, "white")
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    canvas.thumbnail((_IMAGE_SIDE, _IMAGE_SIDE), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=90, optimize=False, progressive=False)
    return buffer.getvalue()


def _caption_tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")


# ---- ImageNet-style class folders --------------------------------------------------------------------------


def _build_imagenet(fashion: Path, dest: Path, per_class: int, rng: random.Random) -> dict[str, int]:
    counts = {"train": 0, "val": 0, "classes": 0}
    for class_dir in sorted(p for p in fashion.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.png"))[:per_class]
        rng.shuffle(files)
        num_val = max(1, len(files) // 5)
        for index, path in enumerate(files):
            split = "val" if index < num_val else "train"
            shutil.copyfile(path, _mkparent(dest / split / class_dir.name / path.name))
            counts[split] += 1
        counts["classes"] += 1
    return counts


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---- Karpathy-style caption files ----------------------------------------------------------------------------


def _num_test(num_images: int) -> int:
    return max(2, num_images // 6)


def _test_first(corpus: list, held: list, num_images: int, num_test: int, strict: bool) -> tuple[list, int, bool]:
    """Items for `num_images` Karpathy positions, the test positions (first) filled from `held`:
    (items, number of test positions, whether the test images are held out). With `strict`, `held` must fill
    all `num_test` positions or the test images come from the corpus; otherwise the test split shrinks to the
    held-out items there are (and comes from the corpus only when there are none)."""
    if len(held) >= num_test or (held and not strict):
        if len(held) < num_test:
            logger.warning(
                "%d held-out images for %d test positions: the test split has %d", len(held), num_test, len(held)
            )
        num_test = min(num_test, len(held))
        return held[:num_test] + corpus[: num_images - num_test], num_test, True
    logger.warning("%d held-out images for %d test positions: test images come from the corpus", len(held), num_test)
    return corpus[:num_images], num_test, False


def _karpathy_splits(num_images: int, num_test: int, num_val: int) -> list[str]:
    """Split per position: `num_test` test, `num_val` val, 1/12 restval, the rest train."""
    num_restval = max(1, num_images // 12)
    splits = ["test"] * num_test + ["val"] * num_val + ["restval"] * num_restval
    return (splits + ["train"] * num_images)[:num_images]


def _sentence(raw: str, imgid: int, sentid: int) -> dict[str, Any]:
    return {"raw": raw, "tokens": _caption_tokens(raw), "imgid": imgid, "sentid": sentid}


def _build_coco(
    stamps: list[dict[str, Any]], dest: Path, sizes: tuple[int, int], test_held_out: bool
) -> dict[str, int]:
    """Karpathy COCO file of `stamps`; `sizes` = (test, val) images."""
    images, counts = [], defaultdict(int)
    for imgid, (stamp, split) in enumerate(zip(stamps, _karpathy_splits(len(stamps), *sizes), strict=True)):
        cocoid = imgid + 1
        filepath = "train2014" if split in ("train", "restval") else "val2014"
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        _write_bytes(dest / filepath / filename, _jpeg(stamp["png"]))
        images.append(
            {
                "filepath": filepath,
                "filename": filename,
                "imgid": imgid,
                "cocoid": cocoid,
                "split": split,
                "sentids": [imgid],
                "sentences": [_sentence(stamp["caption"], imgid, imgid)],
                "stamp": stamp["stamp"],
            }
        )
        counts[split] += 1
    info = {"description": "miniature COCO Karpathy split from Tux Paint stamps (one caption each)"}
    info["test_held_out"] = test_held_out
    _write_json(dest / "dataset_coco.json", {"dataset": "coco", "images": images, "info": info})
    return dict(counts)


# Words that name no object: a caption's domain is decided by the rest.
_FUNCTION_WORDS = frozenset(
    "a an the of and or with in on at to for from by its it is are this that these those his her their some".split()
)


def _novelty_domain(caption: str, vocabulary: set[str]) -> str:
    """NoCaps' domains by word novelty: in-domain when the COCO-style training captions use every content word of
    `caption`, out-domain when they use none, near-domain in between (NoCaps: objects all, none or some of them
    COCO classes)."""
    words = [w for w in _caption_tokens(caption) if w not in _FUNCTION_WORDS]
    known = sum(w in vocabulary for w in words)
    if words and known == len(words):
        return "in-domain"
    return "out-domain" if known == 0 else "near-domain"


def _build_nocaps(
    items: list[dict[str, Any]], dest: Path, held_out: bool, training_captions: list[str]
) -> dict[str, int]:
    """NoCaps-style val (with captions) and test (every fifth in name order) files of `items` (stamps or emoji rows);
    domains by the novelty of each caption's words to `training_captions` (the COCO-style training split's)."""
    ordered = sorted(items, key=_item_name)
    # Every fifth to test, so that both kinds of picture (emoji file names sort before stamp paths) are in both.
    val, test = [item for i, item in enumerate(ordered) if i % 5 != 4], ordered[4::5]
    vocabulary = {word for caption in training_captions for word in _caption_tokens(caption)}
    if not held_out:
        source = "Tux Paint stamps of the pretraining corpus"
    else:
        kinds = [
            name
            for name, present in (("Tux Paint stamps", "stamp"), ("emoji", "image"))
            if any(present in item for item in items)
        ]
        source = "held-out " + " and ".join(kinds)
    counts = {}
    for split, chosen in (("val", val), ("test", test)):
        images, annotations = [], []
        for index, stamp in enumerate(chosen):
            open_images_id = hashlib.sha1(_item_name(stamp).encode()).hexdigest()[:16]
            data = _item_jpeg(stamp)
            _write_bytes(dest / split / f"{open_images_id}.jpg", data)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            entry = {"id": index, "open_images_id": open_images_id, "height": height, "width": width}
            entry |= {"coco_url": "", "file_name": f"{open_images_id}.jpg", "license": 0, "date_captured": ""}
            entry["domain"] = _novelty_domain(stamp["caption"], vocabulary)
            images.append(entry)
            annotations.append({"image_id": index, "id": index, "caption": stamp["caption"]})
        info = {"description": f"miniature NoCaps {split} from {source}", "synthetic": True, "held_out": held_out}
        info["domain_assignment"] = "novelty of the caption's words to the COCO-style training captions"
        data = {"licenses": [], "info": info, "images": images}
        if split == "val":
            data["annotations"] = annotations
        name = "nocaps_val_4500_captions.json" if split == "val" else "nocaps_test_image_info.json"
        _write_json(dest / name, data)
        counts[split] = len(images)
    return counts


def _item_name(item: dict[str, Any]) -> str:
    """A stamp's path, or an emoji row's image file name."""
    return item["stamp"] if "stamp" in item else Path(item["image"]).name


def _emoji_rows(folder: Path, rng: random.Random) -> list[dict[str, Any]]:
    """Rows of `folder/pairs.jsonl` (none if absent), shuffled, with the image path made absolute."""
    pairs_file = folder / "pairs.jsonl"
    if not pairs_file.is_file():
        return []
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda row: row["image"])
    rng.shuffle(rows)
    return [row | {"image": folder / row["image"]} for row in rows]


def _unseen_captions(held: list[dict[str, Any]], corpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out items whose caption no corpus item has (several stamps share "A cow.") and whose picture no
    corpus item nearly repeats (some emoji and stamps differ only in a detail): either would make the zero-shot
    units' leakage check (`evaluation.leakage`, same fingerprint and thresholds) fail."""
    return _new_pictures(_captions_unseen(held, corpus), corpus)


def _captions_unseen(held: list[dict[str, Any]], corpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out items whose caption no corpus item has (normalised as the leakage check does)."""
    seen = {normalise_caption(item["caption"]) for item in corpus}
    return [item for item in held if normalise_caption(item["caption"]) not in seen]


def _new_pictures(held: list[dict[str, Any]], corpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out items whose picture no corpus item nearly repeats (`evaluation.leakage`'s fingerprint and
    thresholds)."""
    if not held:
        return held
    corpus_prints = [fp for fp in (image_fingerprint(_item_jpeg(item)) for item in corpus) if fp is not None]
    if not corpus_prints:
        return held
    thumbs = np.stack([thumb for thumb, _ in corpus_prints])  # [N, 16, 16, 3]
    aspects = np.array([aspect for _, aspect in corpus_prints])
    unseen = []
    for item in held:
        fingerprint = image_fingerprint(_item_jpeg(item))
        if fingerprint is not None:
            thumb, aspect = fingerprint
            same = np.abs(aspects / aspect - 1) <= MAX_ASPECT_DIFFERENCE
            same &= np.abs(thumbs - thumb).mean(axis=(1, 2, 3)) < MAX_MEAN_DIFFERENCE
            if same.any():
                continue
        unseen.append(item)
    if len(unseen) < len(held):
        logger.info("%d held-out images nearly repeat a corpus image: left out", len(held) - len(unseen))
    return unseen


def _familiar_first(held: list[dict[str, Any]], corpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`held` reordered (stably) by the share of its caption's words that some corpus caption uses, highest
    first. Emoji names are often single words ("ghost", "barber pole"); a test split of names made of words no
    training name has would ask a few hundred training pairs for zero-shot naming. As in the real benchmarks, test
    pictures and captions are new, their words mostly are not."""
    vocabulary = {word for item in corpus for word in _caption_tokens(item["caption"])}

    def familiarity(item: dict[str, Any]) -> float:
        words = _caption_tokens(item["caption"])
        return sum(word in vocabulary for word in words) / max(1, len(words))

    return sorted(held, key=familiarity, reverse=True)


def _item_jpeg(item: dict[str, Any]) -> bytes:
    """The benchmark's JPEG of a stamp ({"png"}) or an emoji row ({"image": path})."""
    return _jpeg(item["png"] if "png" in item else Path(item["image"]).read_bytes())


def _build_flickr(
    demo_root: Path, dest: Path, num_images: int, sizes: tuple[int, int], strict: bool, rng: random.Random
) -> dict[str, int]:
    """Karpathy Flickr30K file of emoji; `sizes` = (test, val) images as asked for (test shrinks to the
    held-out emoji there are). Returns the counts and the held-out emoji the test split leaves over."""
    corpus = _emoji_rows(demo_root / "emoji", rng)
    held = _familiar_first(_unseen_captions(_emoji_rows(demo_root / HELDOUT / "emoji", rng), corpus), corpus)
    num_test, num_val = sizes
    # Every corpus emoji trains (or validates): a few hundred names are few enough already.
    num_images = max(num_images, min(num_test, len(held)) + len(corpus))
    rows, num_test, test_held_out = _test_first(corpus, held, num_images, num_test, strict)
    images, counts = [], defaultdict(int)
    for imgid, (row, split) in enumerate(zip(rows, _karpathy_splits(len(rows), num_test, num_val), strict=True)):
        filename = f"{1000000 + imgid}.jpg"
        _write_bytes(dest / "flickr30k-images" / filename, _jpeg(row["image"].read_bytes()))
        # The corpus pairs name each emoji by its Unicode name alone, and so do these captions: zero-shot
        # retrieval then measures new pictures and names, not a prompt no training caption has. Measured on the
        # demo, one ITC checkpoint: mean recall 6.67 with the bare names, 4.17 with "An emoji of <name>." (chance 2.67).
        raw = row["caption"]
        images.append(
            {
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentids": [imgid],
                "sentences": [_sentence(raw, imgid, imgid)],
            }
        )
        counts[split] += 1
    info = {"description": "miniature Flickr30K Karpathy split from rendered emoji and their names"}
    info["test_held_out"] = test_held_out
    _write_json(dest / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": images, "info": info})
    return dict(counts), (held[num_test:] if test_held_out else [])


# ---- template-generated VQA and NLVR2 ------------------------------------------------------------------------


def _answers(answer: str, variants: list[str]) -> list[dict[str, Any]]:
    raw = [answer] * (10 - len(variants)) + variants
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(raw)]


# Stamp folders (the first part of a Tux Paint stamp path) as answers and as phrases in yes/no questions.
_KINDS = {
    "animals": ("animal", "an animal"),
    "clothes": ("clothes", "clothing"),
    "food": ("food", "food"),
    "hobbies": ("hobby", "a hobby item"),
    "household": ("household", "a household item"),
    "medical": ("medical", "a medical item"),
    "military": ("military", "a military item"),
    "naturalforces": ("nature", "a force of nature"),
    "people": ("person", "a person"),
    "plants": ("plant", "a plant"),
    "seasonal": ("seasonal", "a seasonal decoration"),
    "space": ("space", "something from space"),
    "sports": ("sports", "sports gear"),
    "symbols": ("symbol", "a symbol"),
    "town": ("town", "something from a town"),
    "vehicles": ("vehicle", "a vehicle"),
}
# Basic colour names and their RGB anchors; a picture's colour is the anchor most of its object pixels are
# nearest to (pixels close to the white canvas are background; see `dominant_colour`).
_COLOURS = {
    "red": (200, 30, 30),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 50),
    "green": (50, 160, 60),
    "blue": (40, 90, 200),
    "purple": (130, 60, 160),
    "pink": (240, 150, 190),
    "brown": (130, 80, 40),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
}


def dominant_colour(jpeg: bytes) -> str:
    """The basic colour name most of the picture's non-background pixels are nearest to."""
    with Image.open(io.BytesIO(jpeg)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)  # (H*W, 3)
    anchors = np.asarray(list(_COLOURS.values()), dtype=np.float32)  # (C, 3)
    obj = pixels[pixels.min(axis=1) < 235]  # the canvas is pure white; JPEG noise stays above 235
    if len(obj) < 0.02 * len(pixels):
        return "white"
    nearest = ((obj[:, None, :] - anchors[None]) ** 2).sum(-1).argmin(1)  # (N,)
    counts = np.bincount(nearest, minlength=len(anchors))
    # Stamps have dark outlines and shading: an object counts as black, gray or white only when chromatic pixels
    # are rare.
    chromatic = counts.copy()
    chromatic[[list(_COLOURS).index(name) for name in ("black", "gray", "white")]] = 0
    if chromatic.sum() >= 0.3 * counts.sum():
        counts = chromatic
    return list(_COLOURS)[int(counts.argmax())]


def _build_vqa(coco: Path, dest: Path, rng: random.Random) -> dict[str, int]:
    """Three questions per captioned stamp whose answers come from a closed set that train and val share, as
    VQAv2's do: the stamp's kind (its Tux Paint folder), a yes/no question about a kind (half of them true) and
    the colour of the object (`dominant_colour` of the very JPEG the model sees)."""
    images = json.loads((coco / "dataset_coco.json").read_text(encoding="utf-8"))["images"]
    questions: dict[str, list] = {"train2014": [], "val2014": []}
    annotations: dict[str, list] = {"train2014": [], "val2014": []}
    # A seeded half of the images goes to val2014, whatever their Karpathy split.
    answerable = [image for image in images if image.get("stamp", "").split("/")[0] in _KINDS]
    kinds = sorted({image["stamp"].split("/")[0] for image in answerable})
    order = list(range(len(answerable)))
    rng.shuffle(order)
    val_positions = set(order[: len(answerable) // 2])
    for position, image in enumerate(answerable):
        kind, image_id = image["stamp"].split("/")[0], image["cocoid"]
        subtype = "val2014" if position in val_positions else "train2014"
        source = coco / image["filepath"] / image["filename"]
        jpeg = source.read_bytes()
        _write_bytes(_mkparent(dest / subtype / f"COCO_{subtype}_{image_id:012d}.jpg"), jpeg)
        asked = kind if rng.random() < 0.5 else rng.choice([k for k in kinds if k != kind] or [kind])
        qas = [
            ("What kind of thing is this?", "what kind", "other", _KINDS[kind][0], []),
            (f"Is this {_KINDS[asked][1]}?", "is this", "yes/no", "yes" if asked == kind else "no", []),
            ("What color is it?", "what color", "other", dominant_colour(jpeg), []),
        ]
        for index, (question, question_type, answer_type, answer, variants) in enumerate(qas):
            question_id = image_id * 1000 + index  # the VQA convention
            questions[subtype].append({"image_id": image_id, "question": question, "question_id": question_id})
            annotations[subtype].append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": question_type,
                    "answer_type": answer_type,
                    "multiple_choice_answer": answer,
                    "answers": _answers(answer, variants),
                }
            )
    info = {"description": "miniature VQA from Tux Paint stamps", "template_generated": True}
    for subtype in ("train2014", "val2014"):
        common = {"info": info, "license": {}, "data_subtype": subtype, "template_generated": True}
        _write_json(
            dest / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
            common | {"task_type": "Open-Ended", "data_type": "mscoco", "questions": questions[subtype]},
        )
        _write_json(
            dest / f"v2_mscoco_{subtype}_annotations.json",
            common | {"data_type": "mscoco", "annotations": annotations[subtype]},
        )
    num_val_images = len({q["image_id"] for q in questions["val2014"]})
    return {
        "train_questions": len(questions["train2014"]),
        "val_questions": len(questions["val2014"]),
        "rest_val_images": max(1, num_val_images // 2),
    }


_NLVR2_TEMPLATES = (
    ("The left image shows a {c}.", lambda left, right, c: left == c),
    ("The right image shows a {c}.", lambda left, right, c: right == c),
    ("Both images show a {c}.", lambda left, right, c: left == c and right == c),
    ("Neither image shows a {c}.", lambda left, right, c: left != c and right != c),
)
NLVR2_NAMED_KINDS = ("shoe",)
"""The kinds the statements name (the pictures show every kind). Measured on the demo (beit3_tiny, 64 px, 10
epochs, 200 test examples, configs/finetune_demo_nlvr2.yaml): naming a shoe in these four forms the fine-tune
reaches 85.5-91.5% (three seeds); naming any of the five kinds it stays at 49.5% (train 55.0), naming a shoe or
a bag at 50.0: the word-to-picture match takes more than the demo budget. With a fifth form, "Exactly one image
shows a shoe." (an XOR of the two pictures), two seeds of three stayed at 50-53% (one still at 60.0 after 15
epochs)."""


def _build_nlvr2(fashion: Path, dest: Path, num_sets: tuple[int, int, int], rng: random.Random) -> dict[str, int]:
    all_files = {p.name: sorted(p.glob("*.png")) for p in sorted(fashion.iterdir()) if p.is_dir()}
    classes = sorted(c for c, files in all_files.items() if files)
    # test1 pictures come from every 5th file of a class, train and dev never use those (a class with a single
    # file shares it).
    pools: dict[str, dict[str, list[Path]]] = {"test1": defaultdict(list), "train": defaultdict(list)}
    for c in classes:
        kind = FASHION_KINDS.get(c, c.replace("_", " "))  # kinds differ in shape at 28 px; other folders are their own
        pools["test1"][kind] += all_files[c][4::5] or all_files[c][-1:]
        pools["train"][kind] += [f for i, f in enumerate(all_files[c]) if i % 5 != 4] or all_files[c]
    kinds = sorted(pools["train"])
    named = [kind for kind in NLVR2_NAMED_KINDS if kind in kinds] or kinds
    counts = {}
    for split, count in zip(("train", "dev", "test1"), num_sets, strict=True):
        by_kind = pools["test1" if split == "test1" else "train"]
        lines = []
        for set_id in range(count):
            template, truth = _NLVR2_TEMPLATES[set_id % len(_NLVR2_TEMPLATES)]
            target = rng.choice(named)
            sentence = template.format(c=target)
            # One sentence on two pairs (pair ids 0 and 1) with opposite labels when it can be drawn.
            for pair_id, wanted in enumerate(rng.sample([True, False], 2)):
                left, right = _draw_pair(kinds, target, truth, wanted, rng)
                identifier = f"{split}-{set_id}-{pair_id}-0"
                folder = f"images/train/{set_id % 10}" if split == "train" else split
                stem = identifier.rsplit("-", 1)[0]
                sources = [rng.choice(by_kind[kind]) for kind in (left, right)]
                for side, source in enumerate(sources):
                    shutil.copyfile(source, _mkparent(dest / folder / f"{stem}-img{side}.png"))
                label = truth(left, right, target)
                line = {"identifier": identifier, "sentence": sentence, "label": str(label)}
                line |= {"left_url": f"fashion_mnist/{sources[0].parent.name}"}
                line |= {"right_url": f"fashion_mnist/{sources[1].parent.name}"}
                line |= {"writer": "template", "synset": target, "query": target, "validation": {}}
                line |= {"template_generated": True}
                line |= {"directory": set_id % 10} if split == "train" else {"extra_validations": {}}
                lines.append(json.dumps(line, sort_keys=True))
        _write_text(dest / "nlvr2" / "data" / f"{split}.json", "\n".join(lines) + "\n")
        counts[split] = len(lines)
    return counts


def _draw_pair(classes: list[str], target: str, truth: Any, wanted: bool, rng: random.Random) -> tuple[str, str]:
    """A (left, right) class pair whose label is `wanted` if one turns up in 50 draws (biased to `target`)."""
    pair = (rng.choice(classes), rng.choice(classes))
    for _ in range(50):
        left = target if rng.random() < 0.5 else rng.choice(classes)
        right = target if rng.random() < 0.5 else rng.choice(classes)
        pair = (left, right)
        if truth(left, right, target) == wanted:
            break
    return pair


def _read_manifest(out_root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
