"""The dense miniature: compositor semantics on a hand-made stamp, and the ADE-layout build from Tux Paint."""

import numpy as np
import pytest
from PIL import Image

from evaluation.miniature_dense import (
    TUXPAINT_STAMPS,
    Stamp,
    build_ade20k_miniature,
    compose_scene,
    split_stamps,
)
from evaluation.tasks import get_task


def _disk_stamp(side=32, color=(200, 30, 40)):
    yy, xx = np.mgrid[:side, :side]
    disk = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= (side / 2 - 1) ** 2
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[..., :3] = color
    rgba[..., 3] = np.where(disk, 255, 0)
    return Stamp("test/disk.png", "food", rgba), disk


def _placed(mask, top, left, size):
    canvas = np.zeros((size + 64, size + 64), dtype=bool)
    canvas[top + 32 : top + 32 + mask.shape[0], left + 32 : left + 32 + mask.shape[1]] = mask
    return canvas[32 : 32 + size, 32 : 32 + size]


def test_instance_mask_is_the_stamps_alpha_where_it_lands():
    stamp, disk = _disk_stamp()
    background = np.full((80, 80, 3), 20, dtype=np.uint8)
    for seed in range(5):
        # Scale 0.5 of a 64 px scene = a 32 px long side: the stamp is pasted at its own size.
        scene = compose_scene(
            [stamp],
            [("flat", background)],
            np.random.default_rng(seed),
            size=(64, 64),
            num_objects=(1, 1),
            scale=(0.5, 0.5),
            min_visible=1,
        )
        (instance,) = scene.instances
        assert instance.category == "food" and instance.stamp == "test/disk.png"
        # The mask is the stamp's alpha > 0 placed somewhere (clipped at the border): find the placement.
        assert any(
            np.array_equal(instance.mask, _placed(disk, top, left, 64))
            for top in range(-31, 64)
            for left in range(-31, 64)
        )
        assert np.all(scene.image[instance.mask] == (200, 30, 40))  # opaque pixels are the stamp's
        assert np.all(scene.image[~instance.mask] == 20)  # the rest is the background


def test_later_objects_cover_earlier_ones():
    stamp, _ = _disk_stamp()
    background = np.zeros((64, 64, 3), dtype=np.uint8)
    scene = compose_scene(
        [stamp],
        [("flat", background)],
        np.random.default_rng(3),
        size=(64, 64),
        num_objects=(4, 4),
        scale=(0.5, 0.5),
        min_visible=1,
    )
    masks = np.stack([i.mask for i in scene.instances])
    assert masks.sum(axis=0).max() <= 1  # visible masks never overlap


def test_stamp_split_is_disjoint():
    stamps = [Stamp(f"c/{i}.png", "c" if i % 2 else "d", np.zeros((2, 2, 4), np.uint8)) for i in range(20)]
    split = split_stamps(stamps)
    assert not {s.name for s in split["train"]} & {s.name for s in split["val"]}
    assert len(split["val"]) == 4 and len(split["train"]) == 16


@pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="tuxpaint-stamps-default is not installed")
def test_ade_miniature_from_tux_paint_reads_through_the_task(tmp_path):
    built = build_ade20k_miniature(tmp_path, num_train=4, num_val=2, size=(48, 64))
    assert built["built"] and built["counts"]["val"]["images"] == 2
    assert build_ade20k_miniature(tmp_path, num_train=4, num_val=2, size=(48, 64))["built"] is False
    dataset = get_task("ade20k").dataset("val", built["root"], None, 32, img_scale=(64, 48))
    assert dataset.classes == ["background", "animals", "food", "town"]  # the demo's three stamp folders
    for stem, image_path, _ in dataset.items:
        label = dataset.label(stem)
        assert label.shape == (48, 64) and set(np.unique(label)) <= set(range(4))
        assert np.array(Image.open(image_path)).std() > 5  # a real photo, not a flat fill
