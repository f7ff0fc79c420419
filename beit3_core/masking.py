"""Masks for BEiT-3 masked data modeling: block-wise image masking and BERT-style text masking.

Image masking follows BEiT (arXiv 2106.08254, Algorithm 1) with the BEiT v2 top-up (arXiv 2208.06366) that
makes the number of masked patches exact. Text masking is the recommendation of the project spec
(`tokenizer_mdm.md` section 4.3): an exact count of uniformly chosen real tokens with 80/10/10 replacement.
Checked against microsoft/unilm `beit/masking_generator.py`, `beit2/masking_generator.py` and the
`CaptioningDataset` masking in `beit3/datasets.py`.

Shapes: B = batch, H x W = patch grid, N = H * W patches, T = text length. Image masks are flattened
row-major (index = row * W + col), the order of a Conv2d patch embedding followed by `flatten(2)`.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (the default `ignore_index` of `F.cross_entropy`)."""

ReplaceMode = Literal["bert_80_10_10", "all_mask"]
_REPLACE_MODES = ("bert_80_10_10", "all_mask")


@dataclass
class BlockMaskGenerator:
    """BEiT block-wise masking with an exact number of masked patches.

    Rectangles with a log-uniform aspect ratio are dropped on the grid until the target is reached or a block
    cannot be placed in `max_attempts` tries; the BEiT v2 top-up then masks uniformly chosen free cells so the
    count is always exactly `num_masked`. BEiT's own setting (75 of 196 patches) is `num_masked=75`; the
    default `mask_ratio=0.4` gives `round(0.4 * N)`, i.e. 78 for 14x14 and 102 for 16x16.

    Unresolved `None` fields are filled in by `__post_init__`, so after construction every field holds the
    value in use.
    """

    grid_size: tuple[int, int] = (14, 14)
    """Patch grid (H, W)."""
    mask_ratio: float = 0.4
    """Fraction of patches to mask; only used when `num_masked` is None."""
    num_masked: int | None = None
    """Exact number of masked patches per mask; None -> round(mask_ratio * H * W)."""
    min_num_patches: int = 16
    """Smallest area of one block (sampled area lies between this and the remaining budget)."""
    max_num_patches: int | None = None
    """Largest number of new cells one block may add; None -> num_masked."""
    min_aspect: float = 0.3
    """Lower bound of the block aspect ratio h / w."""
    max_aspect: float | None = None
    """Upper bound of the block aspect ratio; None -> 1 / min_aspect."""
    max_attempts: int = 10
    """Tries per block before the block phase gives up."""
    top_up: bool = True
    """Fill the shortfall of the block phase with random cells. Off only to inspect the block phase."""

    def __post_init__(self) -> None:
        height, width = self.grid_size
        if height < 1 or width < 1:
            raise ValueError(f"grid_size must be positive, got {self.grid_size}")
        num_patches = height * width
        if self.num_masked is None:
            if not 0.0 <= self.mask_ratio <= 1.0:
                raise ValueError(f"mask_ratio must lie in [0, 1], got {self.mask_ratio}")
            self.num_masked = int(round(self.mask_ratio * num_patches))
        if not 0 <= self.num_masked <= num_patches:
            raise ValueError(f"num_masked={self.num_masked} must lie in [0, {num_patches}] for grid {self.grid_size}")
        if self.min_num_patches < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {self.min_num_patches}")
        if self.max_num_patches is None:
            self.max_num_patches = self.num_masked
        if self.max_num_patches < 1 and self.num_masked > 0:
            raise ValueError(f"max_num_patches must be >= 1, got {self.max_num_patches}")
        if self.min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {self.min_aspect}")
        if self.max_aspect is None:
            self.max_aspect = 1.0 / self.min_aspect
        if self.max_aspect < self.min_aspect:
            raise ValueError(f"max_aspect={self.max_aspect} is smaller than min_aspect={self.min_aspect}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    @property
    def num_patches(self) -> int:
        """Number of cells in the grid."""
        return self.grid_size[0] * self.grid_size[1]

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Draws one mask.

        Args:
            rng: Source of randomness; the mask is a pure function of its state.

        Returns:
            Bool array [H * W], row-major, True = masked, with exactly `num_masked` True entries
            (at most that many when `top_up` is off).
        """
        height, width = self.grid_size
        mask_HW = np.zeros((height, width), dtype=bool)
        num_done = 0
        while num_done < self.num_masked:
            budget = min(self.num_masked - num_done, self.max_num_patches)
            num_new = self._place_block(mask_HW, budget, rng)
            if num_new == 0:
                break
            num_done += num_new
        mask_N = mask_HW.reshape(-1)
        if self.top_up and num_done < self.num_masked:
            free = np.flatnonzero(~mask_N)
            mask_N[rng.choice(free, size=self.num_masked - num_done, replace=False)] = True
        return mask_N

    def sample_batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Draws independent masks for a batch.

        Args:
            batch_size: Number of masks B.
            rng: Source of randomness, consumed in batch order.

        Returns:
            Bool array [B, H * W], each row as returned by `__call__`.
        """
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        masks_BN = np.zeros((batch_size, self.num_patches), dtype=bool)
        for i in range(batch_size):
            masks_BN[i] = self(rng)
        return masks_BN

    def _place_block(self, mask_HW: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Tries to mask one rectangle adding between 1 and `budget` new cells; returns the number added."""
        height, width = mask_HW.shape
        # Upstream samples the area between min_num_patches and the budget even when the budget is smaller,
        # so the bounds are sorted rather than clipped: small budgets still get small blocks.
        area_lo, area_hi = sorted((float(self.min_num_patches), float(budget)))
        log_aspect_lo, log_aspect_hi = math.log(self.min_aspect), math.log(self.max_aspect)
        # One draw per attempt and quantity keeps the RNG call count small (this loop runs per image).
        u_A4 = rng.random((self.max_attempts, 4))
        for u_area, u_aspect, u_top, u_left in u_A4:
            area = area_lo + (area_hi - area_lo) * u_area
            aspect = math.exp(log_aspect_lo + (log_aspect_hi - log_aspect_lo) * u_aspect)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            # Strict bounds as in BEiT: a block never spans the whole width or height.
            if not (0 < h < height and 0 < w < width):
                continue
            top = int(u_top * (height - h + 1))
            left = int(u_left * (width - w + 1))
            window = mask_HW[top : top + h, left : left + w]
            num_new = h * w - int(window.sum())
            if 0 < num_new <= budget:
                window[...] = True
                return num_new
        return 0


def mask_text(
    ids: np.ndarray,
    padding_mask: np.ndarray,
    mask_ratio: float,
    mask_id: int,
    rng: np.random.Generator,
    *,
    special_ids: tuple[int, ...] = (0, 1, 2, 3),
    eos_id: int = 2,
    random_id_range: tuple[int, int] | None = None,
    replace_mode: ReplaceMode = "bert_80_10_10",
    mask_eos: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks an exact number of real tokens per row (BERT-style MLM inputs and labels).

    Candidates are the non-padding positions whose id is neither in `special_ids` nor `mask_id`. Each row
    masks `clamp(round(mask_ratio * num_candidates), 1, num_candidates)` of them, chosen uniformly without
    replacement (rows without candidates mask nothing). `round` is half-to-even, as Python's `round`.

    Args:
        ids: Token ids [B, T].
        padding_mask: Bool [B, T], True at padding.
        mask_ratio: Fraction of candidates to mask, in (0, 1].
        mask_id: Id of `<mask>`.
        rng: Source of randomness; the output is a pure function of its state and the inputs.
        special_ids: Ids never masked. The default is the XLM-R layout `<s>`, `<pad>`, `</s>`, `<unk>`.
        eos_id: Id of `</s>`; only used by `mask_eos`.
        random_id_range: Half-open range [lo, hi) of the random replacement ids; None -> (4, mask_id), i.e.
            every regular piece and neither a special id nor `<mask>`.
        replace_mode: "bert_80_10_10" (per chosen token: 80% `<mask>`, 10% random id, 10% unchanged) or
            "all_mask" (every chosen token becomes `<mask>`).
        mask_eos: Let `</s>` be a candidate, as BEiT-3's captioning fine-tuning does.

    Returns:
        `(masked_ids, labels)`, both int64 [B, T]: a masked copy of `ids`, and the original id at chosen
        positions with `IGNORE_INDEX` elsewhere.
    """
    ids_BT = np.asarray(ids, dtype=np.int64)
    pad_BT = np.asarray(padding_mask, dtype=bool)
    if ids_BT.ndim != 2:
        raise ValueError(f"ids must be 2-D [B, T], got shape {ids_BT.shape}")
    if pad_BT.shape != ids_BT.shape:
        raise ValueError(f"padding_mask shape {pad_BT.shape} differs from ids shape {ids_BT.shape}")
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1], got {mask_ratio}")
    if replace_mode not in _REPLACE_MODES:
        raise ValueError(f"replace_mode must be one of {_REPLACE_MODES}, got {replace_mode!r}")
    rand_lo, rand_hi = (4, mask_id) if random_id_range is None else random_id_range
    if replace_mode == "bert_80_10_10" and rand_lo >= rand_hi:
        raise ValueError(f"random_id_range [{rand_lo}, {rand_hi}) is empty")

    protected = [i for i in special_ids if not (mask_eos and i == eos_id)] + [mask_id]
    candidate_BT = ~pad_BT & ~np.isin(ids_BT, protected)
    num_candidates_B = candidate_BT.sum(axis=1)
    num_mask_B = np.minimum(np.maximum(np.rint(mask_ratio * num_candidates_B), 1), num_candidates_B).astype(np.int64)

    # Uniform subset without replacement, all rows at once: sort iid keys with non-candidates pushed last,
    # then take the first num_mask positions of each row's order.
    keys_BT = np.where(candidate_BT, rng.random(ids_BT.shape), 2.0)
    order_BT = np.argsort(keys_BT, axis=1, kind="stable")
    rank_take_BT = np.arange(ids_BT.shape[1])[None, :] < num_mask_B[:, None]
    chosen_BT = np.zeros_like(candidate_BT)
    np.put_along_axis(chosen_BT, order_BT, rank_take_BT, axis=1)

    masked_BT = ids_BT.copy()
    if replace_mode == "all_mask":
        masked_BT[chosen_BT] = mask_id
    else:
        u_BT = rng.random(ids_BT.shape)
        random_BT = rng.integers(rand_lo, rand_hi, size=ids_BT.shape, dtype=np.int64)
        to_mask_BT = chosen_BT & (u_BT < 0.8)
        to_random_BT = chosen_BT & (u_BT >= 0.8) & (u_BT < 0.9)
        masked_BT[to_mask_BT] = mask_id
        masked_BT[to_random_BT] = random_BT[to_random_BT]
    labels_BT = np.where(chosen_BT, ids_BT, IGNORE_INDEX)
    return masked_BT, labels_BT
