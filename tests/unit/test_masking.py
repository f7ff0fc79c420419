"""Tests for `beit3_core.masking`: block-wise image masks and BERT-style text masks."""

import numpy as np
import pytest

from beit3_core.masking import IGNORE_INDEX, BlockMaskGenerator, mask_text

# ---------------------------------------------------------------------------------------------------------------
# Block-wise image masking
# ---------------------------------------------------------------------------------------------------------------


def _bounding_box(mask_HW: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask_HW.any(axis=1))
    cols = np.flatnonzero(mask_HW.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


@pytest.mark.parametrize(
    ("grid_size", "num_masked", "expected"),
    [((14, 14), None, 78), ((14, 14), 75, 75), ((16, 16), None, 102), ((7, 9), None, 25)],
)
def test_block_mask_count_is_exact(grid_size, num_masked, expected):
    gen = BlockMaskGenerator(grid_size=grid_size, num_masked=num_masked)
    assert gen.num_masked == expected
    masks_BN = gen.sample_batch(2000, np.random.default_rng(0))
    assert masks_BN.shape == (2000, grid_size[0] * grid_size[1])
    assert masks_BN.dtype == np.bool_
    np.testing.assert_array_equal(masks_BN.sum(axis=1), expected)


@pytest.mark.parametrize("num_masked", [0, 1, 2, 3, 4])
def test_tiny_grid_count_is_exact(num_masked):
    # On 2x2 only 1x1 blocks satisfy the strict size bound, so most of the work falls to the top-up.
    gen = BlockMaskGenerator(grid_size=(2, 2), num_masked=num_masked)
    masks_BN = gen.sample_batch(300, np.random.default_rng(num_masked))
    np.testing.assert_array_equal(masks_BN.sum(axis=1), num_masked)


def test_single_row_grid_fits_no_block():
    # A block must be strictly shorter than the grid, which a 1-row grid forbids: only the top-up masks.
    rng = np.random.default_rng(1)
    block_only = BlockMaskGenerator(grid_size=(1, 6), num_masked=3, top_up=False)
    assert not block_only.sample_batch(50, rng).any()
    topped = BlockMaskGenerator(grid_size=(1, 6), num_masked=3)
    masks_BN = topped.sample_batch(600, rng)
    np.testing.assert_array_equal(masks_BN.sum(axis=1), 3)
    # The top-up is uniform over free cells: each of the 6 cells is masked half of the time.
    np.testing.assert_allclose(masks_BN.mean(axis=0), 0.5, atol=0.08)


def test_single_block_is_a_bounded_rectangle():
    height, width = 6, 11
    gen = BlockMaskGenerator(grid_size=(height, width), num_masked=40, min_num_patches=8)
    rng = np.random.default_rng(2)
    num_placed = 0
    areas, coverage_HW = [], np.zeros((height, width), dtype=int)
    for _ in range(500):
        mask_HW = np.zeros((height, width), dtype=bool)
        num_new = gen._place_block(mask_HW, budget=20, rng=rng)
        assert num_new == mask_HW.sum()
        if num_new == 0:
            continue
        num_placed += 1
        areas.append(num_new)
        coverage_HW += mask_HW
        top, bottom, left, right = _bounding_box(mask_HW)
        h, w = bottom - top, right - left
        assert mask_HW[top:bottom, left:right].all(), "a block is a filled rectangle"
        assert 0 < h < height and 0 < w < width
        assert 1 <= h * w <= 20
        # h and w are rounded from sqrt(area * r) and sqrt(area / r): allow half a cell of slack each way.
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
    assert num_placed > 400
    # Areas are drawn between min_num_patches and the budget, and every cell (corners included) is reachable.
    assert min(areas) <= 10 and max(areas) >= 18
    assert (coverage_HW > 0).all()


def test_block_phase_respects_target_and_layout_is_row_major():
    height, width = 5, 12
    gen = BlockMaskGenerator(grid_size=(height, width), num_masked=16, min_num_patches=16, top_up=False)
    masks_BN = gen.sample_batch(500, np.random.default_rng(3))
    assert (masks_BN.sum(axis=1) <= 16).all()
    num_rect = 0
    for mask_N in masks_BN:
        if not mask_N.any():  # every attempt of the first block can fail on a 5-row grid
            continue
        mask_HW = mask_N.reshape(height, width)
        top, bottom, left, right = _bounding_box(mask_HW)
        # When a single block covers the mask, row-major reshaping must give back a filled rectangle that
        # respects the strict bounds; a column-major flatten would scatter it.
        if mask_HW[top:bottom, left:right].sum() == mask_N.sum() and mask_HW[top:bottom, left:right].all():
            num_rect += 1
            assert bottom - top < height and right - left < width
    assert num_rect > 300


def test_block_masks_are_clustered():
    gen = BlockMaskGenerator(grid_size=(14, 14), num_masked=75)
    rng = np.random.default_rng(4)
    masks_BHW = gen.sample_batch(300, rng).reshape(-1, 14, 14)
    adjacent_pairs = (masks_BHW[:, :, 1:] & masks_BHW[:, :, :-1]).sum(axis=(1, 2)).mean()
    # A uniform random 75-of-196 mask has about 182 * (75/196) * (74/195) = 26 horizontal neighbour pairs.
    random_BHW = np.stack([rng.permutation(196) < 75 for _ in range(300)]).reshape(-1, 14, 14)
    random_pairs = (random_BHW[:, :, 1:] & random_BHW[:, :, :-1]).sum(axis=(1, 2)).mean()
    assert random_pairs < 30
    assert adjacent_pairs > 45


def test_block_mask_is_deterministic_under_seed():
    gen = BlockMaskGenerator()
    a = gen.sample_batch(20, np.random.default_rng(7))
    b = gen.sample_batch(20, np.random.default_rng(7))
    c = gen.sample_batch(20, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_block_mask_defaults_are_resolved():
    gen = BlockMaskGenerator(grid_size=(14, 14), num_masked=75)
    assert gen.max_num_patches == 75
    assert gen.max_aspect == pytest.approx(1 / 0.3)
    assert gen.num_patches == 196


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_masked": 197}, "num_masked"),
        ({"num_masked": -1}, "num_masked"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"grid_size": (0, 14)}, "grid_size"),
        ({"min_num_patches": 0}, "min_num_patches"),
        ({"min_aspect": 0.0}, "min_aspect"),
        ({"min_aspect": 0.5, "max_aspect": 0.4}, "max_aspect"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_block_mask_rejects_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockMaskGenerator(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Text masking
# ---------------------------------------------------------------------------------------------------------------

MASK_ID = 1000
SPECIALS = (0, 1, 2, 3)


def _make_batch(batch_size: int, max_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows `<s> pieces </s> <pad>...` with random lengths; about 5% of pieces are `<unk>`."""
    rng = np.random.default_rng(seed)
    ids_BT = np.ones((batch_size, max_len), dtype=np.int64)
    for row in range(batch_size):
        num_pieces = rng.integers(0, max_len - 1)
        pieces = rng.integers(4, MASK_ID, size=num_pieces)
        pieces[rng.random(num_pieces) < 0.05] = 3
        ids_BT[row, : num_pieces + 2] = [0, *pieces, 2]
    return ids_BT, ids_BT == 1


def _expected_count(num_candidates: int, ratio: float) -> int:
    return 0 if num_candidates == 0 else min(max(round(ratio * num_candidates), 1), num_candidates)


@pytest.mark.parametrize("ratio", [0.15, 0.5, 1.0])
def test_text_mask_counts_and_exclusions(ratio):
    ids_BT, pad_BT = _make_batch(400, 40, seed=10)
    ids_before = ids_BT.copy()
    masked_BT, labels_BT = mask_text(ids_BT, pad_BT, ratio, MASK_ID, np.random.default_rng(11))
    np.testing.assert_array_equal(ids_BT, ids_before)
    chosen_BT = labels_BT != IGNORE_INDEX
    for row in range(ids_BT.shape[0]):
        num_candidates = int(((ids_BT[row] >= 4) & ~pad_BT[row]).sum())
        assert chosen_BT[row].sum() == _expected_count(num_candidates, ratio)
    assert not chosen_BT[pad_BT].any()
    assert not chosen_BT[np.isin(ids_BT, SPECIALS)].any()
    np.testing.assert_array_equal(labels_BT[chosen_BT], ids_BT[chosen_BT])
    np.testing.assert_array_equal(masked_BT[~chosen_BT], ids_BT[~chosen_BT])
    assert masked_BT.dtype == np.int64 and labels_BT.dtype == np.int64


def test_text_mask_minimum_of_one_and_empty_rows():
    # 3 candidates at 15% rounds to 0 and is clamped to 1; rows without candidates mask nothing.
    ids_BT = np.array([[0, 10, 11, 12, 2, 1], [0, 2, 1, 1, 1, 1], [0, 3, 3, 2, 1, 1]])
    _, labels_BT = mask_text(ids_BT, ids_BT == 1, 0.15, MASK_ID, np.random.default_rng(0))
    np.testing.assert_array_equal((labels_BT != IGNORE_INDEX).sum(axis=1), [1, 0, 0])


def test_text_mask_positions_are_uniform():
    row = np.array([0, *range(20, 30), 2, 1, 1])
    ids_BT = np.tile(row, (4000, 1))
    _, labels_BT = mask_text(ids_BT, ids_BT == 1, 0.3, MASK_ID, np.random.default_rng(12))
    freq_T = (labels_BT != IGNORE_INDEX).mean(axis=0)
    np.testing.assert_allclose(freq_T[1:11], 0.3, atol=0.03)
    assert freq_T[0] == 0 and freq_T[11:].sum() == 0


def test_text_mask_80_10_10_split():
    ids_BT, pad_BT = _make_batch(1000, 64, seed=13)
    masked_BT, labels_BT = mask_text(ids_BT, pad_BT, 0.5, MASK_ID, np.random.default_rng(14))
    chosen_BT = labels_BT != IGNORE_INDEX
    out_C, orig_C = masked_BT[chosen_BT], ids_BT[chosen_BT]
    assert out_C.size > 10000
    is_mask_C = out_C == MASK_ID
    is_random_C = ~is_mask_C & (out_C != orig_C)
    assert is_mask_C.mean() == pytest.approx(0.8, abs=0.015)
    # A random draw equal to the original counts as unchanged (chance about 1 in 1000).
    assert is_random_C.mean() == pytest.approx(0.1, abs=0.01)
    assert (~is_mask_C & ~is_random_C).mean() == pytest.approx(0.1, abs=0.01)
    replaced_C = out_C[is_random_C]
    assert replaced_C.min() >= 4 and replaced_C.max() < MASK_ID


def test_text_mask_custom_random_range():
    ids_BT, pad_BT = _make_batch(300, 32, seed=15)
    masked_BT, labels_BT = mask_text(
        ids_BT, pad_BT, 0.5, MASK_ID, np.random.default_rng(16), random_id_range=(500, 503)
    )
    chosen_BT = labels_BT != IGNORE_INDEX
    random_C = masked_BT[chosen_BT & (masked_BT != MASK_ID) & (masked_BT != ids_BT)]
    assert random_C.size > 100
    assert set(np.unique(random_C).tolist()) <= {500, 501, 502}


def test_text_mask_all_mask_mode():
    ids_BT, pad_BT = _make_batch(200, 32, seed=17)
    masked_BT, labels_BT = mask_text(ids_BT, pad_BT, 0.15, MASK_ID, np.random.default_rng(18), replace_mode="all_mask")
    chosen_BT = labels_BT != IGNORE_INDEX
    assert chosen_BT.any()
    assert (masked_BT[chosen_BT] == MASK_ID).all()
    np.testing.assert_array_equal(masked_BT[~chosen_BT], ids_BT[~chosen_BT])


def test_text_mask_eos_option():
    ids_BT, pad_BT = _make_batch(300, 16, seed=19)
    is_eos_BT = ids_BT == 2
    _, labels_off = mask_text(ids_BT, pad_BT, 0.5, MASK_ID, np.random.default_rng(20))
    _, labels_on = mask_text(ids_BT, pad_BT, 0.5, MASK_ID, np.random.default_rng(20), mask_eos=True)
    assert not (labels_off[is_eos_BT] != IGNORE_INDEX).any()
    assert (labels_on[is_eos_BT] == 2).sum() > 50
    for row in range(ids_BT.shape[0]):
        num_candidates = int(((ids_BT[row] >= 4) & ~pad_BT[row]).sum()) + 1
        assert (labels_on[row] != IGNORE_INDEX).sum() == _expected_count(num_candidates, 0.5)
    # <s> stays protected even when </s> may be masked.
    assert not (labels_on[ids_BT == 0] != IGNORE_INDEX).any()


def test_text_mask_is_deterministic_under_seed():
    ids_BT, pad_BT = _make_batch(64, 32, seed=21)
    a = mask_text(ids_BT, pad_BT, 0.15, MASK_ID, np.random.default_rng(5))
    b = mask_text(ids_BT, pad_BT, 0.15, MASK_ID, np.random.default_rng(5))
    c = mask_text(ids_BT, pad_BT, 0.15, MASK_ID, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replace_mode": "spans"}, "replace_mode"),
        ({"mask_ratio": 0.0}, "mask_ratio"),
        ({"padding_mask": np.zeros((2, 3), dtype=bool)}, "padding_mask"),
        ({"random_id_range": (10, 10)}, "random_id_range"),
    ],
)
def test_text_mask_rejects_bad_args(kwargs, match):
    ids_BT = np.array([[0, 5, 6, 2], [0, 7, 2, 1]])
    args = {"ids": ids_BT, "padding_mask": ids_BT == 1, "mask_ratio": 0.5, "mask_id": MASK_ID}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mask_text(rng=np.random.default_rng(0), **args)
