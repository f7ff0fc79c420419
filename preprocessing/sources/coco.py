"""`coco_captions` and `karpathy`: caption annotation files that refer to image files.

`coco_captions` reads the COCO captions JSON (`captions_train2014.json`: `images` with `id` and
`file_name`, `annotations` with `image_id` and `caption`); `karpathy` reads the Karpathy split files
(`dataset_coco.json`, `dataset_flickr30k.json`: `images` with `filepath`, `filename`, `split` and
`sentences[].raw`). Image paths are relative to `SourceSpec.image_dir`, itself relative to the JSON file's
directory. One pair record per caption.

Keys use positions in the file, not the ids it contains (`<file>#a<annotation index>`,
`<file>#i<image index>s<sentence index>`): ids are not guaranteed unique, positions are, and both are
stable for an unchanged file. Each image is read once for all its captions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from preprocessing.sources.reader import Reader, caption_bytes, load_image_ref, resolve_image_ref
from preprocessing.sources.records import RawRecord, RecordError, SourceSpec

__all__ = ["COCO_READER", "KARPATHY_READER"]


def _image_dir(spec: SourceSpec, path: Path) -> Path:
    return path.parent / spec.image_dir if spec.image_dir else path.parent


def _load(spec: SourceSpec, path: Path, required: tuple[str, ...]) -> tuple[dict[str, Any] | None, RawRecord | None]:
    """The parsed JSON object, or a single error record for the whole file."""
    rel = spec.relative(path)
    error, detail = None, ""
    try:
        data = json.loads(path.read_bytes())
    except OSError as err:
        error, detail = RecordError.UNREADABLE, str(err)
    except ValueError as err:
        error, detail = RecordError.BAD_JSON, str(err)
    else:
        if not isinstance(data, dict) or not all(isinstance(data.get(name), list) for name in required):
            error, detail = RecordError.MISSING_FIELD, f"expected a JSON object with list(s) {list(required)}"
    if error is None:
        return data, None
    record = RawRecord(
        source=spec.name,
        key=f"{rel}#!file",
        kind="pair",
        input_file=rel,
        provenance="whole file",
        error=error,
        error_detail=detail,
    )
    return None, record


def _coco_groups(data: dict[str, Any]) -> tuple[dict[object, object], dict[object, list[int]], list[int]]:
    """(file name per image id, annotation indices per image id, indices of annotations with no image)."""
    file_names = {e["id"]: e.get("file_name") for e in data["images"] if isinstance(e, dict) and _hashable(e.get("id"))}
    by_image: dict[object, list[int]] = {}
    orphans = []
    for index, annotation in enumerate(data["annotations"]):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if _hashable(image_id) and image_id in file_names:
            by_image.setdefault(image_id, []).append(index)
        else:
            orphans.append(index)
    return file_names, by_image, orphans


def _hashable(value: object) -> bool:
    return isinstance(value, int | str)


def read_coco(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one pair record per annotation, grouped by image in `images` order; orphans come last."""
    data, file_error = _load(spec, path, ("images", "annotations"))
    if data is None:
        yield file_error
        return
    rel, image_dir = spec.relative(path), _image_dir(spec, path)
    file_names, by_image, orphans = _coco_groups(data)
    annotations = data["annotations"]
    for image_id, indices in by_image.items():
        image, error, detail = load_image_ref(spec, image_dir, file_names[image_id], "file_name")
        if image is None and error is None:
            error, detail = RecordError.MISSING_FIELD, f"image id {image_id} lacks a string file_name"
        for index in indices:
            text, caption_detail = caption_bytes(annotations[index].get("caption"), "caption")
            yield RawRecord(
                source=spec.name,
                key=f"{rel}#a{index}",
                kind="pair",
                input_file=rel,
                provenance=f"annotation {index} (id {annotations[index].get('id')}, image id {image_id})",
                image_bytes=image,
                text=text,
                error=RecordError.MISSING_FIELD if caption_detail else error,
                error_detail=caption_detail or detail,
            )
    for index in orphans:
        yield RawRecord(
            source=spec.name,
            key=f"{rel}#a{index}",
            kind="pair",
            input_file=rel,
            provenance=f"annotation {index}",
            error=RecordError.MISSING_FIELD,
            error_detail="annotation is not an object or its image_id is not in images",
        )


def coco_images(spec: SourceSpec, path: Path) -> list[Path]:
    """Existing image files that have at least one caption in the COCO file at `path`."""
    data, _ = _load(spec, path, ("images", "annotations"))
    if data is None:
        return []
    file_names, by_image, _ = _coco_groups(data)
    refs = (resolve_image_ref(_image_dir(spec, path), file_names[image_id]) for image_id in by_image)
    return list(dict.fromkeys(ref for ref in refs if ref is not None and ref.is_file()))


def _karpathy_images(spec: SourceSpec, data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any] | Any]]:
    """(index, entry) of the image entries whose split is selected (all entries when `split` is None)."""
    splits = None if spec.split is None else {s.strip() for s in spec.split.split(",")}
    for index, entry in enumerate(data["images"]):
        if splits is None or (isinstance(entry, dict) and entry.get("split") in splits):
            yield index, entry


def _karpathy_path(entry: dict[str, Any]) -> str | None:
    filename = entry.get("filename")
    if not isinstance(filename, str):
        return None
    filepath = entry.get("filepath")  # COCO has train2014/val2014 sub-folders; Flickr30k has none
    return f"{filepath}/{filename}" if isinstance(filepath, str) and filepath else filename


def read_karpathy(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    """Yields one pair record per sentence of each image in the selected splits."""
    data, file_error = _load(spec, path, ("images",))
    if data is None:
        yield file_error
        return
    rel, image_dir = spec.relative(path), _image_dir(spec, path)
    for index, entry in _karpathy_images(spec, data):
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(sentences, list) or not sentences:
            yield RawRecord(
                source=spec.name,
                key=f"{rel}#i{index}",
                kind="pair",
                input_file=rel,
                provenance=f"image {index}",
                error=RecordError.MISSING_FIELD,
                error_detail="image entry is not an object or has no sentences",
            )
            continue
        image, error, detail = load_image_ref(spec, image_dir, _karpathy_path(entry), "filename")
        if image is None and error is None:
            error, detail = RecordError.MISSING_FIELD, "image entry lacks a string filename"
        for number, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            text, caption_detail = caption_bytes(raw, "raw")
            yield RawRecord(
                source=spec.name,
                key=f"{rel}#i{index}s{number}",
                kind="pair",
                input_file=rel,
                provenance=f"image {index} (split {entry.get('split')}) sentence {number}",
                image_bytes=image,
                text=text,
                error=RecordError.MISSING_FIELD if caption_detail else error,
                error_detail=caption_detail or detail,
            )


def karpathy_images(spec: SourceSpec, path: Path) -> list[Path]:
    """Existing image files of the selected splits of the Karpathy file at `path`."""
    data, _ = _load(spec, path, ("images",))
    if data is None:
        return []
    image_dir = _image_dir(spec, path)
    refs = (
        resolve_image_ref(image_dir, _karpathy_path(entry))
        for _, entry in _karpathy_images(spec, data)
        if isinstance(entry, dict)
    )
    return list(dict.fromkeys(ref for ref in refs if ref is not None and ref.is_file()))


COCO_READER = Reader(format="coco_captions", suffixes=(".json",), read_file=read_coco, referenced_files=coco_images)
KARPATHY_READER = Reader(
    format="karpathy", suffixes=(".json",), read_file=read_karpathy, referenced_files=karpathy_images
)
