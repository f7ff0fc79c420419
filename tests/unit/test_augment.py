"""Tests for train-time augmentation: RandAugment parsing and ops, random erasing, Mixup/CutMix, task wiring."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.model_inputs import SMALL

from evaluation.finetune.config import build_finetune_config
from evaluation.tasks import get_task
from evaluation.tasks.augment import (
    OPS,
    RAND_INCREASING_TRANSFORMS,
    VL_TRANSFORMS,
    Mixup,
    RandAugment,
    RandomErasing,
    mixup_target,
    parse_rand_augment,
    rand_augment,
    smoothed_one_hot,
    soft_target_cross_entropy,
    vl_random_augment,
)
from evaluation.tasks.data import vl_image

IMAGENET = get_task("imagenet")


def _noise_image(seed: int = 0, size: int = 32) -> Image.Image:
    # Values in [20, 240]: AutoContrast can stretch them and Solarize at high thresholds still bites.
    pixels = np.random.default_rng(seed).integers(20, 241, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_parse_released_imagenet_string():
    spec = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.increasing, spec.num_ops, spec.prob) == (9, 0.5, True, 2, 0.5)
    assert parse_rand_augment("rand-n3-m7-inc0").num_ops == 3 and not parse_rand_augment("rand-inc0").increasing
    assert parse_rand_augment("rand-m9-mstd101").magnitude_std == math.inf
    assert rand_augment("rand-m9-mstd0.5-inc1").ops == RAND_INCREASING_TRANSFORMS


@pytest.mark.parametrize("spec", ["rnd-m9", "rand-m9-x3", "rand-mfoo", "rand-m9-w0", "rand-p2", ""])
def test_bad_rand_augment_string_is_named(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        parse_rand_augment(spec)


@pytest.mark.parametrize("name", sorted(set(OPS) - {"Identity"}))
def test_each_op_keeps_shape_and_changes_the_image(name):
    image = _noise_image()
    augment = RandAugment(ops=(name,), magnitude=9)
    out = augment.apply(name, image, 9, np.random.default_rng(0))
    assert out.size == image.size and out.mode == "RGB"
    pixels = np.asarray(out)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert not np.array_equal(pixels, np.asarray(image)), name


def test_rand_augment_is_seeded_by_torch():
    augment = rand_augment("rand-m9-mstd0.5-inc1", fill=(124, 116, 104))
    image = _noise_image()
    outputs = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        outputs.append(np.asarray(augment(image)))
    assert np.array_equal(outputs[0], outputs[1])
    assert any(not np.array_equal(outputs[0], other) for other in outputs[2:])


def test_vl_random_augment_is_the_release_setting():
    augment = vl_random_augment()
    assert augment.ops == VL_TRANSFORMS and augment.num_ops == 2 and augment.magnitude == 7
    assert augment.translate_const == 10 and augment.fill == (128, 128, 128) and augment.prob == 0.5


def test_vl_image_augments_only_train(tmp_path):
    path = tmp_path / "image.png"
    _noise_image(size=40).save(path)

    class Marker(RandAugment):
        def __call__(self, image, rng=None):
            return Image.new("RGB", image.size, (255, 0, 0))

    marker = Marker(ops=("Identity",), magnitude=0)
    assert torch.equal(vl_image(path, 16, train=False, randaug=marker), vl_image(path, 16, train=False))
    red = vl_image(path, 16, train=True, randaug=marker)
    assert torch.all(red[0] == 1) and torch.all(red[1] == -1)


def test_random_erasing_box_area_and_rate():
    erasing = RandomErasing(prob=1.0)
    torch.manual_seed(0)
    for _ in range(50):
        out = erasing(torch.zeros(3, 64, 64))
        fraction = (out[0] != 0).float().mean().item()
        assert 0.015 <= fraction <= 0.36  # area in [0.02, 1/3] up to rounding of the box sides
        assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
    torch.manual_seed(0)
    sometimes = RandomErasing(prob=0.25)
    erased = sum(bool((sometimes(torch.zeros(3, 32, 32)) != 0).any()) for _ in range(400))
    assert 0.18 <= erased / 400 <= 0.32
    torch.manual_seed(3)
    first = sometimes(torch.zeros(3, 32, 32))
    torch.manual_seed(3)
    assert torch.equal(first, sometimes(torch.zeros(3, 32, 32)))


def test_label_smoothing_values():
    targets = smoothed_one_hot(torch.tensor([2, 0]), num_classes=10, smoothing=0.1)
    assert targets[0, 2].item() == pytest.approx(0.91) and targets[0, 0].item() == pytest.approx(0.01)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))
    assert torch.equal(mixup_target(torch.tensor([2, 0]), 10, 1.0, 0.1), targets)
    logits = torch.randn(2, 10)
    expected = F.cross_entropy(logits, torch.tensor([2, 0]), label_smoothing=0.1)
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_targets_sum_to_one_and_lam_in_range():
    mixup = Mixup()  # the released 0.8 / 1.0, switch 0.5, smoothing 0.1
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(0)
    for _ in range(20):
        mixed, targets = mixup(images, labels, num_classes=7)
        assert mixed.shape == images.shape and targets.shape == (6, 7)
        assert torch.allclose(targets.sum(dim=1), torch.ones(6))
        lam = targets[0, 0].item() - 0.1 / 7  # label 0 is on row 0 only (row 5 holds label 5)
        assert 0.0 <= lam / 0.9 <= 1.0 + 1e-6


def test_mixup_blends_with_the_reversed_batch():
    images = torch.randn(4, 3, 8, 8)
    mixed, lam = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0).mix(images, np.random.default_rng(0))
    assert 0 < lam < 1 and torch.allclose(mixed, images * lam + images.flip(0) * (1 - lam))


def test_cutmix_box_area_matches_lam():
    cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        lam, box = cutmix.sample(20, 24, rng)
        top, bottom, left, right = box
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 24
        assert lam == pytest.approx(1 - (bottom - top) * (right - left) / (20 * 24))
    images = torch.arange(2 * 1 * 20 * 24, dtype=torch.float32).reshape(2, 1, 20, 24)
    mixed, lam = cutmix.mix(images, np.random.default_rng(1))
    pasted = (mixed != images).float().mean().item()
    assert pasted == pytest.approx(1 - lam)
    with pytest.raises(ValueError, match="alphas"):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)


def test_mixup_is_seeded_by_torch():
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    torch.manual_seed(5)
    first = Mixup()(images, labels, 4)
    torch.manual_seed(5)
    second = Mixup()(images, labels, 4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_aug")
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01", "n02"]):
            (root / split / wnid).mkdir(parents=True)
            _noise_image(seed=c, size=40).save(root / split / wnid / "a.JPEG", format="JPEG")
    return root


def test_imagenet_dataset_augments_only_train(imagenet_root):
    train = IMAGENET.dataset("train", imagenet_root, None, 32)  # released defaults
    assert train.randaug is not None and train.randaug.ops == RAND_INCREASING_TRANSFORMS
    assert train.randaug.fill == (124, 116, 104) and train.erasing.prob == 0.25
    assert train[0]["image"].shape == (3, 32, 32)
    val = IMAGENET.dataset("val", imagenet_root, None, 32, randaug="rand-m9-mstd0.5-inc1", reprob=0.25)
    assert val.randaug is None and val.erasing is None
    assert torch.equal(val[0]["image"], IMAGENET.dataset("val", imagenet_root, None, 32)[0]["image"])
    off = IMAGENET.dataset("train", imagenet_root, None, 32, randaug=False, reprob=0.0)
    assert off.randaug is None and off.erasing is None
    with pytest.raises(ValueError, match="rand-m9-q1"):
        IMAGENET.dataset("val", imagenet_root, None, 32, randaug="rand-m9-q1")


def test_imagenet_loss_mixes_only_when_asked(imagenet_root):
    torch.manual_seed(0)
    model = IMAGENET.build_model("beit3_tiny", num_classes=2, **SMALL)
    val = IMAGENET.dataset("val", imagenet_root, None, 32)
    batch = IMAGENET.collate([val[0], val[1]])
    plain, _ = IMAGENET.loss(model, batch)
    expected = F.cross_entropy(model(batch["image"]), batch["label"], label_smoothing=0.1)
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(1)
    mixed, metrics = IMAGENET.loss(model, batch, mixup=0.8, cutmix=1.0)
    mixed.backward()
    assert torch.isfinite(mixed) and set(metrics) == {"loss", "acc1"} and model.head.weight.grad is not None


def test_config_routes_augmentation_to_dataset_and_loss():
    cfg = build_finetune_config("imagenet", {})
    assert cfg.task_augmentations("dataset") == {"randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25}
    assert cfg.task_augmentations("loss") == {"mixup": 0.8, "cutmix": 1.0}
    off = build_finetune_config("imagenet", {"augment": {"randaug": False, "reprob": 0}, "mixup": 0, "cutmix": 0})
    assert off.active_augmentations() == {}
    vqa = build_finetune_config("vqav2", {"data": {"tokenizer": "spm.model"}})
    assert vqa.task_augmentations("dataset") == {"randaug": True} and vqa.task_augmentations("loss") == {}
    assert build_finetune_config("nlvr2", {"data": {"tokenizer": "spm.model"}}).active_augmentations() == {}
    with pytest.raises(ValueError, match="augment.mixup"):
        build_finetune_config("vqav2", {"data": {"tokenizer": "spm.model"}, "augment": {"mixup": 0.8}})
    with pytest.raises(ValueError, match="rand-m9-zz"):
        build_finetune_config("imagenet", {"augment": {"randaug": "rand-m9-zz"}})


@pytest.mark.parametrize("bits", [-1, 0, 1, 4, 8])
def test_posterize_accepts_the_whole_increasing_range(bits):
    from PIL import Image

    from evaluation.tasks.augment import _posterize

    image = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3).reshape(16, 16, 3))
    out = np.asarray(_posterize(image, bits))
    assert out.shape == (16, 16, 3)
    if bits <= 0:
        assert out.max() == 0
    elif bits >= 8:
        assert np.array_equal(out, np.asarray(image))
    else:
        assert len(np.unique(out)) == 2**bits


def test_imagenet_crop_scale_bounds_the_train_crop(imagenet_root):
    # A crop of the whole area of a square image is the whole image (timm's sampler falls back to it), so with
    # crop_scale (1, 1) every training sample is the eval image or its mirror; timm's default range crops.
    val = IMAGENET.dataset("val", imagenet_root, None, 32)[0]["image"]
    whole = IMAGENET.dataset("train", imagenet_root, None, 32, randaug=False, reprob=0.0, crop_scale=(1.0, 1.0))
    default = IMAGENET.dataset("train", imagenet_root, None, 32, randaug=False, reprob=0.0)
    torch.manual_seed(0)
    for _ in range(6):
        image = whole[0]["image"]
        assert torch.allclose(image, val, atol=1e-6) or torch.allclose(image, val.flip(-1), atol=1e-6)
    cropped = [default[0]["image"] for _ in range(6)]
    assert not all(torch.allclose(x, val, atol=1e-2) or torch.allclose(x, val.flip(-1), atol=1e-2) for x in cropped)
    for bad in ((0.0, 1.0), (0.5, 0.4), (0.5, 1.2), (0.5,)):
        with pytest.raises(ValueError, match="crop_scale"):
            IMAGENET.dataset("train", imagenet_root, None, 32, crop_scale=bad)


def test_imagenet_normalizations(tmp_path):
    # One flat colour: every pixel maps to (v / 255 - mean) / std of the chosen constants.
    for split in ("train", "val"):
        (tmp_path / split / "n01").mkdir(parents=True)
        Image.new("RGB", (40, 40), (255, 0, 51)).save(tmp_path / split / "n01" / "a.png")
    expected = {
        "imagenet": [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225],
        "inception": [1.0, -1.0, 0.2 * 2 - 1],
    }
    for normalize, values in expected.items():
        image = IMAGENET.dataset("val", tmp_path, None, 32, normalize=normalize)[0]["image"]
        assert torch.allclose(image, torch.tensor(values)[:, None, None].expand(3, 32, 32), atol=1e-5), normalize
    assert IMAGENET.dataset("train", tmp_path, None, 32, normalize="inception").randaug.fill == (128, 128, 128)
    with pytest.raises(ValueError, match="normalize"):
        IMAGENET.dataset("val", tmp_path, None, 32, normalize="clip")
