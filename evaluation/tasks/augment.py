"""Train-time image augmentation of the fine-tuning tasks: RandAugment, random erasing, Mixup / CutMix.

BEiT-3 (arXiv 2208.10442) fine-tunes ImageNet with timm's recipe (RandAugment "rand-m9-mstd0.5-inc1", random
erasing 0.25 in "pixel" mode, Mixup 0.8 / CutMix 1.0 with label smoothing 0.1) and the vision-language tasks
with unilm's `RandomAugment(2, 7)`. Written with PIL + numpy + torch from the semantics of
huggingface/pytorch-image-models `timm/data/auto_augment.py` (`rand_augment_transform`, `AugmentOp`),
`random_erasing.py` (`RandomErasing`), `mixup.py` (`Mixup`, `mixup_target`, `cutmix_bbox_and_lam`),
`loss/cross_entropy.py` (`SoftTargetCrossEntropy`) and microsoft/unilm `beit3/randaug.py` (`RandomAugment`).

Randomness: every draw comes from a numpy generator seeded from torch's default generator (`torch_rng`), so
`torch.manual_seed` and DataLoader worker seeding control it, as in `evaluation.tasks.data.random_resized_crop`.

Differences from the references: unilm's RandomAugment runs OpenCV kernels (bilinear warps, its own enhance
code); here the same ops and argument ranges run through PIL (bilinear), so pixels differ by rounding. The
timm config section "inc" reads its value as an integer ("inc0" = off; timm's `bool("0")` turns it on), and
the weighted op choice ("w") is not implemented (ValueError).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0
"""Magnitude that maps to each op's strongest argument (timm's `_LEVEL_DENOM`, unilm's `MAX_LEVEL`)."""
GRAY = (128, 128, 128)

# timm `_RAND_TRANSFORMS` ("inc0") and `_RAND_INCREASING_TRANSFORMS` ("inc1").
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd")
RAND_TRANSFORMS += ("Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel")
RAND_TRANSFORMS += ("TranslateYRel",)
RAND_INCREASING_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing")
RAND_INCREASING_TRANSFORMS += ("SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing")
RAND_INCREASING_TRANSFORMS += ("BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY")
RAND_INCREASING_TRANSFORMS += ("TranslateXRel", "TranslateYRel")
# unilm beit3 `build_transform`: RandomAugment(2, 7, isPIL=True, augs=[...]).
VL_TRANSFORMS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY")
VL_TRANSFORMS += ("TranslateX", "TranslateY", "Rotate")
VL_NUM_OPS, VL_MAGNITUDE, VL_TRANSLATE_PIXELS = 2, 7, 10


def torch_rng() -> np.random.Generator:
    """A numpy generator seeded by one draw from torch's default generator (a CPU draw, no device sync)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


# ---- ops: (image, argument, fill, resample) -> image -------------------------------------------------------


def _affine(image: Image.Image, matrix: tuple, fill: tuple, resample: Image.Resampling) -> Image.Image:
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(image: Image.Image, add: int) -> Image.Image:
    """Adds `add` (clipped at 255) to every channel value below 128."""
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    """Keep the top `bits` bits of every channel; 0 bits (the top of the increasing scale) leaves black."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


_Op = Callable[[Image.Image, float, tuple, Image.Resampling], Image.Image]
OPS: dict[str, _Op] = {
    "Identity": lambda im, a, fill, rs: im,
    "AutoContrast": lambda im, a, fill, rs: ImageOps.autocontrast(im),
    "Equalize": lambda im, a, fill, rs: ImageOps.equalize(im),
    "Invert": lambda im, a, fill, rs: ImageOps.invert(im),
    "Rotate": lambda im, degrees, fill, rs: im.rotate(degrees, resample=rs, fillcolor=fill),
    "Posterize": lambda im, bits, fill, rs: _posterize(im, bits),
    "Solarize": lambda im, threshold, fill, rs: ImageOps.solarize(im, threshold),
    "SolarizeAdd": lambda im, add, fill, rs: _solarize_add(im, add),
    "Color": lambda im, factor, fill, rs: ImageEnhance.Color(im).enhance(factor),
    "Contrast": lambda im, factor, fill, rs: ImageEnhance.Contrast(im).enhance(factor),
    "Brightness": lambda im, factor, fill, rs: ImageEnhance.Brightness(im).enhance(factor),
    "Sharpness": lambda im, factor, fill, rs: ImageEnhance.Sharpness(im).enhance(factor),
    "ShearX": lambda im, factor, fill, rs: _affine(im, (1, factor, 0, 0, 1, 0), fill, rs),
    "ShearY": lambda im, factor, fill, rs: _affine(im, (1, 0, 0, factor, 1, 0), fill, rs),
    "TranslateX": lambda im, pixels, fill, rs: _affine(im, (1, 0, pixels, 0, 1, 0), fill, rs),
    "TranslateY": lambda im, pixels, fill, rs: _affine(im, (1, 0, 0, 0, 1, pixels), fill, rs),
    "TranslateXRel": lambda im, pct, fill, rs: _affine(im, (1, 0, pct * im.size[0], 0, 1, 0), fill, rs),
    "TranslateYRel": lambda im, pct, fill, rs: _affine(im, (1, 0, 0, 0, 1, pct * im.size[1]), fill, rs),
}
for _name in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"):
    OPS[f"{_name}Increasing"] = OPS[_name]


# ---- magnitude -> argument (timm `LEVEL_TO_ARG`; unilm's `arg_dict` is the same mapping) ----------------------


def _negate(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _enhance_increasing(level: float, rng: np.random.Generator) -> float:
    # 1.0 = unchanged; moving towards 0.1 or 1.9 strengthens the effect.
    return max(0.1, 1.0 + _negate(level / LEVEL_DENOM * 0.9, rng))


def level_to_arg(name: str, level: float, rng: np.random.Generator, translate_const: float) -> float:
    """The op argument for magnitude `level` (0-10); geometric ops flip the sign with p = 0.5."""
    frac = level / LEVEL_DENOM
    if name in ("Identity", "AutoContrast", "Equalize", "Invert"):
        return 0.0
    if name == "Rotate":
        return _negate(frac * 30.0, rng)  # degrees, [-30, 30]
    if name == "Posterize":
        return int(frac * 4)  # bits kept, [0, 4]: stronger at low magnitude
    if name == "PosterizeIncreasing":
        return 4 - int(frac * 4)
    if name == "Solarize":
        return int(frac * 256)  # threshold, [0, 256]: stronger at low magnitude
    if name == "SolarizeIncreasing":
        return 256 - int(frac * 256)
    if name == "SolarizeAdd":
        return int(frac * 110)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return frac * 1.8 + 0.1  # enhance factor, [0.1, 1.9]
    if name.endswith("Increasing"):
        return _enhance_increasing(level, rng)
    if name in ("ShearX", "ShearY"):
        return _negate(frac * 0.3, rng)
    if name in ("TranslateX", "TranslateY"):
        return _negate(frac * translate_const, rng)  # pixels
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate(frac * 0.45, rng)  # fraction of the image side, [-0.45, 0.45]
    raise ValueError(f"unknown augmentation op {name!r}; known: {sorted(OPS)}")


# ---- RandAugment --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (`parse_rand_augment`)."""

    magnitude: float = LEVEL_DENOM
    num_ops: int = 2
    magnitude_std: float = 0.0
    """Std of the Gaussian noise on the magnitude per op; inf = uniform in [0, magnitude]."""
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False
    """"inc1": the op set whose severity grows with the magnitude."""
    prob: float = 0.5


_SECTION = re.compile(r"([a-z]+)(\d.*)")


def parse_rand_augment(spec: str) -> RandAugmentSpec:
    """Parses a timm RandAugment string such as "rand-m9-mstd0.5-inc1".

    Sections after "rand", in any order: `m` magnitude, `n` ops per image, `mstd` magnitude std (> 100 =
    uniform), `mmax` magnitude upper bound, `inc` increasing-severity op set (0/1), `p` per-op probability.

    Raises:
        ValueError: naming `spec`, for a missing "rand" prefix, an unknown or malformed section or a bad value.
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment config {spec!r} must start with 'rand' (e.g. 'rand-m9-mstd0.5-inc1')")
    values: dict[str, float | int | bool] = {}
    for part in parts[1:]:
        match = _SECTION.fullmatch(part)
        if match is None:
            raise ValueError(f"RandAugment config {spec!r}: section {part!r} is not <key><number>")
        key, text = match.groups()
        try:
            if key == "m":
                values["magnitude"] = float(text)
            elif key == "n":
                values["num_ops"] = int(text)
            elif key == "mstd":
                values["magnitude_std"] = math.inf if float(text) > 100 else float(text)
            elif key == "mmax":
                values["magnitude_max"] = float(text)
            elif key == "inc":
                values["increasing"] = bool(int(text))
            elif key == "p":
                values["prob"] = float(text)
            else:
                raise ValueError(f"unknown section {key!r} (known: m, n, mstd, mmax, inc, p)")
        except ValueError as error:
            raise ValueError(f"RandAugment config {spec!r}: {error}") from None
    parsed = RandAugmentSpec(**values)
    if parsed.num_ops < 0 or parsed.magnitude < 0 or parsed.magnitude_std < 0 or not 0 <= parsed.prob <= 1:
        raise ValueError(f"RandAugment config {spec!r}: n, m, mstd must be >= 0 and p in [0, 1]")
    return parsed


@dataclass(frozen=True, kw_only=True)
class RandAugment:
    """`num_ops` ops drawn with replacement from `ops`, each applied with probability `prob` (timm semantics)."""

    ops: tuple[str, ...]
    magnitude: float
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5
    fill: tuple[int, int, int] = GRAY
    """Colour of the area a geometric op uncovers (timm: the dataset mean in 0-255)."""
    resample: Image.Resampling = Image.Resampling.BICUBIC
    translate_const: float = 250.0
    """Largest shift in pixels of the absolute TranslateX/Y ops (timm default 250; unilm 10)."""

    def __post_init__(self) -> None:
        unknown = [name for name in self.ops if name not in OPS]
        if unknown:
            raise ValueError(f"unknown augmentation ops {unknown}; known: {sorted(OPS)}")

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        rng = rng if rng is not None else torch_rng()
        for index in rng.choice(len(self.ops), self.num_ops, replace=True):
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            image = self.apply(self.ops[index], image, self._magnitude(rng), rng)
        return image

    def apply(self, name: str, image: Image.Image, magnitude: float, rng: np.random.Generator) -> Image.Image:
        """One op at `magnitude` (0-10), whatever `prob` says."""
        arg = level_to_arg(name, magnitude, rng, self.translate_const)
        return OPS[name](image, arg, self.fill, self.resample)

    def _magnitude(self, rng: np.random.Generator) -> float:
        magnitude = self.magnitude
        if self.magnitude_std == math.inf:
            magnitude = rng.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.normal(magnitude, self.magnitude_std)
        return max(0.0, min(magnitude, self.magnitude_max))


def rand_augment(spec: str, fill: Sequence[float] = GRAY) -> RandAugment:
    """timm `rand_augment_transform(spec, hparams)` with bicubic resampling and `fill` as `img_mean`."""
    parsed = parse_rand_augment(spec)
    return RandAugment(
        ops=RAND_INCREASING_TRANSFORMS if parsed.increasing else RAND_TRANSFORMS,
        magnitude=parsed.magnitude,
        num_ops=parsed.num_ops,
        magnitude_std=parsed.magnitude_std,
        magnitude_max=parsed.magnitude_max,
        prob=parsed.prob,
        fill=tuple(int(v) for v in fill),
    )


def vl_random_augment() -> RandAugment:
    """unilm `RandomAugment(2, 7, isPIL=True, augs=VL_TRANSFORMS)`: gray fill, 10-pixel shifts, bilinear."""
    return RandAugment(
        ops=VL_TRANSFORMS,
        magnitude=VL_MAGNITUDE,
        num_ops=VL_NUM_OPS,
        resample=Image.Resampling.BILINEAR,
        translate_const=VL_TRANSLATE_PIXELS,
    )


# ---- random erasing -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RandomErasing:
    """timm `RandomErasing(prob, mode="pixel", max_count=1)` on a normalised [C, H, W] tensor.

    With probability `prob`, one box of area fraction U(min_area, max_area) and log-uniform aspect ratio in
    [min_aspect, 1 / min_aspect] is filled with N(0, 1) noise per pixel and channel (10 tries to fit it).
    """

    prob: float
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3

    def __call__(self, x_CHW: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = rng if rng is not None else torch_rng()
        if rng.random() > self.prob:
            return x_CHW
        channels, height, width = x_CHW.shape
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        for _ in range(10):
            area = rng.uniform(self.min_area, self.max_area) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h < height and w < width:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                noise = torch.from_numpy(rng.standard_normal((channels, h, w), dtype=np.float32))
                x_CHW = x_CHW.clone()
                x_CHW[:, top : top + h, left : left + w] = noise.to(x_CHW.dtype)
                break
        return x_CHW


# ---- Mixup / CutMix -----------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]
"""(top, bottom, left, right), bottom and right exclusive."""


def smoothed_one_hot(labels_B: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """[B, K]: 1 - smoothing + smoothing / K on the label, smoothing / K elsewhere (timm `one_hot`)."""
    off = smoothing / num_classes
    targets_BK = torch.full((labels_B.shape[0], num_classes), off, device=labels_B.device)
    return targets_BK.scatter_(1, labels_B.long()[:, None], 1.0 - smoothing + off)


def mixup_target(labels_B: torch.Tensor, num_classes: int, lam: float, smoothing: float) -> torch.Tensor:
    """Soft targets [B, K] of a batch mixed with its reverse: lam * y + (1 - lam) * y.flip(0)."""
    targets_BK = smoothed_one_hot(labels_B, num_classes, smoothing)
    return targets_BK * lam + targets_BK.flip(0) * (1.0 - lam)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[Box, float]:
    """A box of about (1 - lam) of the image, centred uniformly and clipped; lam corrected to the clipped area."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / (height * width)


def soft_target_cross_entropy(logits_BK: torch.Tensor, targets_BK: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k (timm `SoftTargetCrossEntropy`)."""
    return torch.sum(-targets_BK * F.log_softmax(logits_BK, dim=-1), dim=-1).mean()


@dataclass(frozen=True, kw_only=True)
class Mixup:
    """timm `Mixup` in batch mode: one lam per batch, each image mixed with the batch reversed.

    With probability `prob`, CutMix (Beta(cutmix_alpha)) is chosen with probability `switch_prob` when both
    alphas are > 0, else Mixup (Beta(mixup_alpha)). CutMix pastes a box of the reversed batch and corrects lam
    to the pasted area. Targets are label-smoothed one-hots mixed with the same lam.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0 or self.mixup_alpha + self.cutmix_alpha == 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, one > 0; got {self.mixup_alpha}, {self.cutmix_alpha}")

    def sample(self, height: int, width: int, rng: np.random.Generator) -> tuple[float, Box | None]:
        """(lam, CutMix box or None for Mixup); lam = 1.0 and no box when the batch stays unmixed."""
        if rng.random() >= self.prob:
            return 1.0, None
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return lam, None
        box, lam = cutmix_box(height, width, lam, rng)
        return lam, box

    def mix(self, images_BCHW: torch.Tensor, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, float]:
        """(mixed copy of the images, lam)."""
        rng = rng if rng is not None else torch_rng()
        lam, box = self.sample(images_BCHW.shape[-2], images_BCHW.shape[-1], rng)
        if lam == 1.0:
            return images_BCHW, 1.0
        if box is None:
            return images_BCHW * lam + images_BCHW.flip(0) * (1.0 - lam), lam
        top, bottom, left, right = box
        mixed = images_BCHW.clone()
        mixed[..., top:bottom, left:right] = images_BCHW.flip(0)[..., top:bottom, left:right]
        return mixed, lam

    def __call__(
        self,
        images_BCHW: torch.Tensor,
        labels_B: torch.Tensor,
        num_classes: int,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets [B, K])."""
        mixed, lam = self.mix(images_BCHW, rng)
        return mixed, mixup_target(labels_B, num_classes, lam, self.label_smoothing)
