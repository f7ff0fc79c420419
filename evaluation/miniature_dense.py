"""Miniature dense benchmarks on real pixels: real object cut-outs pasted onto real photos.

Objects are the Tux Paint stamps of the installed Debian package `tuxpaint-stamps-default` that carry an alpha
channel (photo cut-outs and drawings); an object's category is the stamp's top-level folder ("animals",
"food", ...) and its mask is alpha > 0. Backgrounds are real pictures shipped inside installed Python packages,
cropped at random positions and scales and mirrored: either photos (matplotlib's sample `grace_hopper.jpg`;
scikit-learn's `china.jpg` and `flower.jpg` when it is installed) or grey textures (scikit-image's `grass`,
`gravel` and `brick`). Objects and masks are real; only the layout (which object, where, how large, what covers
what) is synthetic.

`compose_scenes` is the shared compositor: each `Scene` holds the RGB image and its visible instances
(category, boolean mask after occlusion, source stamp). `build_ade20k_miniature` writes scenes in the
`ADEChallengeData2016` layout (label 1 = the background photo, 2.. = the object categories, 0 unused), with
stamps split between training and validation so validation objects are never seen in training. Tux Paint is
GPL-2: the output is built at run time and must not be committed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.miniature import _read_manifest, _write_bytes, _write_text

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
CATEGORIES = ("animals", "food", "household", "plants", "town", "vehicles")
"""Stamp folders with at least 30 alpha cut-outs each (the symbols folder, mostly letters and flags, is left out)."""
DEMO_CATEGORIES = ("animals", "food", "town")
"""The three largest folders (146, 67 and 72 usable cut-outs): the classes of the demo's miniature sets, where a
tiny model trained for a few minutes from scratch must tell unseen stamps apart (with all six it predicts only
the background in that budget)."""
MANIFEST = "miniature_manifest.json"
VERSION = 1
VAL_EVERY = 5
"""Every 5th stamp of a category (in sorted order) is kept for validation scenes."""


@dataclass(frozen=True)
class Stamp:
    name: str
    """Path relative to the stamps folder."""
    category: str
    rgba: np.ndarray
    """uint8 [h, w, 4]."""


@dataclass(frozen=True)
class Instance:
    category: str
    mask: np.ndarray
    """bool [H, W]: the visible pixels (later objects cover earlier ones)."""
    stamp: str


@dataclass(frozen=True)
class Scene:
    image: np.ndarray
    """uint8 RGB [H, W, 3]."""
    instances: list[Instance]


def load_stamps(
    root: str | Path = TUXPAINT_STAMPS, categories: Sequence[str] = CATEGORIES, max_side: int = 160
) -> list[Stamp]:
    """Alpha cut-outs (5-95% transparent) of the given top-level folders, sorted, long side <= `max_side`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: apt-get install -y tuxpaint-stamps-default")
    stamps = []
    for category in categories:
        for path in sorted((root / category).rglob("*.png")):
            with Image.open(path) as image:
                if "A" not in image.getbands() and image.mode != "P":
                    continue
                rgba = image.convert("RGBA")
            rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            pixels = np.array(rgba)
            transparent = (pixels[..., 3] == 0).mean()
            if 0.05 < transparent < 0.95:
                stamps.append(Stamp(path.relative_to(root).as_posix(), category, pixels))
    if not stamps:
        raise ValueError(f"{root}: no alpha stamps in {list(categories)}")
    return stamps


BACKGROUNDS = ("photos", "textures")
"""Background kinds: real photos full of object-like structure (faces, flowers, buildings), or grey textures
against which the coloured cut-outs stand out (the spec's suggestion for a detection set; offline_data.md 3)."""
TEXTURES = ("grass", "gravel", "brick")


def load_backgrounds(kind: str = "photos") -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB) of the real pictures of one kind (`BACKGROUNDS`) inside installed packages."""
    if kind == "textures":
        return load_textures()
    if kind != "photos":
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUNDS}")
    import matplotlib

    found = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    try:
        import sklearn

        found += [Path(sklearn.__file__).parent / "datasets" / "images" / name for name in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    backgrounds = []
    for path in found:
        if path.is_file():
            with Image.open(path) as image:
                backgrounds.append((path.name, np.array(image.convert("RGB"))))
    if not backgrounds:
        raise FileNotFoundError("no background photo found in matplotlib's or scikit-learn's sample data")
    return backgrounds


def load_textures() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled grey textures (512 x 512, no download) as (name, uint8 RGB)."""
    import skimage.data

    return [(name, np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2)) for name in TEXTURES]


def _background(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop (20-100% of the short side), resized to `size` (H, W), mirrored with p 0.5."""
    height, width = size
    side = min(photo.shape[:2]) * rng.uniform(0.2, 1.0)
    crop_h, crop_w = int(side * min(1.0, height / width)), int(side * min(1.0, width / height))
    top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
    left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
    crop = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize((width, height))
    out = np.array(crop)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


def compose_scene(
    stamps: Sequence[Stamp],
    backgrounds: Sequence[tuple[str, np.ndarray]],
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 128),
    num_objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.35, 0.8),
    min_visible: int = 16,
) -> Scene:
    """One scene of `size` (H, W) with 1-4 stamps at random scales (long side = scale x the scene's short
    side), positions (at least half inside) and overlaps; instances with < `min_visible` visible pixels are
    left out."""
    height, width = size
    canvas = _background(backgrounds[int(rng.integers(len(backgrounds)))][1], size, rng).astype(np.float32)
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the instance that owns each pixel
    placed = []
    for index in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        stamp = stamps[int(rng.integers(len(stamps)))]
        long_side = max(4, int(min(size) * rng.uniform(*scale)))
        factor = long_side / max(stamp.rgba.shape[:2])
        new_w, new_h = max(2, round(stamp.rgba.shape[1] * factor)), max(2, round(stamp.rgba.shape[0] * factor))
        rgba = Image.fromarray(stamp.rgba).resize((new_w, new_h), Image.Resampling.BILINEAR)
        alpha = np.array(rgba)[..., 3].astype(np.float32) / 255
        mask = np.array(Image.fromarray(stamp.rgba[..., 3] > 0).resize((new_w, new_h), Image.Resampling.NEAREST))
        if rng.random() < 0.5:
            rgba, alpha, mask = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT), alpha[:, ::-1], mask[:, ::-1]
        top = int(rng.integers(-new_h // 2, height - new_h // 2))
        left = int(rng.integers(-new_w // 2, width - new_w // 2))
        # Visible window of the stamp inside the canvas.
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + new_h, height), min(left + new_w, width)
        sy, sx = y0 - top, x0 - left
        region = (slice(y0, y1), slice(x0, x1))
        stamp_region = (slice(sy, sy + y1 - y0), slice(sx, sx + x1 - x0))
        a = alpha[stamp_region][..., None]
        canvas[region] = canvas[region] * (1 - a) + np.array(rgba)[..., :3][stamp_region] * a
        owner[region][mask[stamp_region]] = index
        placed.append(stamp)
    instances = []
    for index, stamp in enumerate(placed):
        visible = owner == index
        if visible.sum() >= min_visible:
            instances.append(Instance(stamp.category, visible, stamp.name))
    return Scene(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), instances)


def compose_scenes(
    num_scenes: int,
    stamps: Sequence[Stamp],
    backgrounds: Sequence[tuple[str, np.ndarray]],
    seed: int,
    **options: Any,
) -> Iterator[Scene]:
    """`num_scenes` scenes from one seeded generator (`compose_scene` options)."""
    rng = np.random.default_rng(seed)
    for _ in range(num_scenes):
        yield compose_scene(stamps, backgrounds, rng, **options)


def split_stamps(stamps: Sequence[Stamp]) -> dict[str, list[Stamp]]:
    """Disjoint stamp sets: every `VAL_EVERY`-th stamp of each category goes to "val", the rest to "train"."""
    out: dict[str, list[Stamp]] = {"train": [], "val": []}
    seen: dict[str, int] = {}
    for stamp in stamps:
        rank = seen.get(stamp.category, 0)
        seen[stamp.category] = rank + 1
        out["val" if rank % VAL_EVERY == VAL_EVERY - 1 else "train"].append(stamp)
    return out


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def reuse_or_reset(root: Path, params: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished build under `root` when its manifest holds `params` (and not `force`), else None after
    removing the manifest, so a build that dies midway never looks finished."""
    manifest = _read_manifest(root)
    if not force and manifest and manifest["parameters"] == params:
        return {"root": root, "built": False, "counts": manifest["summary"]}
    (root / MANIFEST).unlink(missing_ok=True)
    return None


def build_ade20k_miniature(
    out_root: str | Path,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    size: tuple[int, int] = (64, 64),
    stamps_root: str | Path = TUXPAINT_STAMPS,
    categories: Sequence[str] = DEMO_CATEGORIES,
    num_objects: tuple[int, int] = (2, 3),
    scale: tuple[float, float] = (0.5, 0.9),
    force: bool = False,
) -> dict[str, Any]:
    """Writes (or reuses) `out_root/ADEChallengeData2016`; returns `{"root", "built", "counts"}`.

    The defaults are the demo's set: 1000 training and 200 validation scenes of 64 x 64 px with 2-3 objects of
    0.5-0.9 x the side each, three classes (`DEMO_CATEGORIES`); `configs/finetune_demo_ade20k.yaml` gives the
    measured figures. `num_objects` and `scale` go to `compose_scene`.

    Labels: 1 = background photo, 2 + i = `categories[i]`; objectInfo150.txt lists these 1 + len(categories)
    classes (the class count of the miniature). Deterministic for a seed; the manifest is written last.
    """
    root = Path(out_root) / "ADEChallengeData2016"
    params = {"version": VERSION, "seed": seed, "num_train": num_train, "num_val": num_val, "size": list(size)}
    params |= {"categories": list(categories), "num_objects": list(num_objects), "scale": list(scale)}
    previous = reuse_or_reset(root, params, force)
    if previous is not None:
        return previous
    stamps = split_stamps(load_stamps(stamps_root, categories))
    backgrounds = load_backgrounds()
    label_of = {category: 2 + i for i, category in enumerate(categories)}
    counts: dict[str, Any] = {}
    for split, folder, prefix, number, offset in (
        ("train", "training", "train", num_train, 0),
        ("val", "validation", "val", num_val, 1),
    ):
        layout = dict(size=size, num_objects=num_objects, scale=scale)
        scenes = compose_scenes(number, stamps[split], backgrounds, seed * 2 + offset, **layout)
        objects = 0
        for index, scene in enumerate(scenes, start=1):
            label = np.ones(size, dtype=np.uint8)
            for instance in scene.instances:
                label[instance.mask] = label_of[instance.category]
            stem = f"ADE_{prefix}_{index:08d}"
            _write_bytes(root / "images" / folder / f"{stem}.jpg", _png(scene.image, "JPEG"))
            _write_bytes(root / "annotations" / folder / f"{stem}.png", _png(label))
            objects += len(scene.instances)
        counts[split] = {"images": number, "objects": objects, "stamps": len(stamps[split])}
    rows = ["Idx\tRatio\tTrain\tVal\tName", "1\t0\t0\t0\tbackground"]
    rows += [f"{label_of[c]}\t0\t0\t0\t{c}" for c in categories]
    _write_text(root / "objectInfo150.txt", "\n".join(rows) + "\n")
    counts["backgrounds"] = [name for name, _ in backgrounds]
    _write_text(root / MANIFEST, json.dumps({"parameters": params, "summary": counts}, indent=2) + "\n")
    return {"root": root, "built": True, "counts": counts}
