"""Training of preprocessing.vqkd on generated coloured shapes: loss falls, codebook usage rises; augmentation."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from beit3_core.runtime.schedule import cosine_with_warmup as cosine_lr
from preprocessing.vqkd.augment import random_resized_crop_box, render_view, resize_batch, training_views
from preprocessing.vqkd.model import VQKD, vqkd_tiny
from preprocessing.vqkd.teachers import HOGColorTeacher
from preprocessing.vqkd.train import codebook_usage, train_vqkd


def coloured_shapes(num_images: int, size: int, seed: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: a flat background with 1-3 filled rectangles, ellipses or triangles."""
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, size, size, 3), np.uint8)
    for i in range(num_images):
        image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
            w, h = (int(v) for v in rng.integers(8, size // 2, 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(3)
            if kind == 0:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
            elif kind == 1:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
            else:
                draw.polygon([(x0, y0 + h), (x0 + w, y0 + h), (x0 + w // 2, y0)], fill=fill)
        images[i] = np.asarray(image)
    return images


@pytest.fixture
def single_thread():
    """One intra-op thread: the run's float reductions (so its numbers) no longer depend on the core count, and
    it does not slow down ~10x from thread oversubscription when other jobs share the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("single_thread")
def test_training_lowers_loss_and_raises_codebook_usage() -> None:
    train_images, held_out = coloured_shapes(200, 64, seed=0), coloured_shapes(64, 64, seed=1)
    config = vqkd_tiny(img_size=64, patch_size=8, num_codes=64)
    torch.manual_seed(0)
    untrained = codebook_usage(VQKD(config).eval(), held_out, min_usage=0.0)

    records: list[dict] = []
    tokenizer = train_vqkd(
        train_images,
        config,
        HOGColorTeacher(patch_size=8),
        steps=40,
        batch_size=32,
        crop_scale=(0.35, 1.0),
        restart_dead_every=5,
        log_every=1,
        log_fn=records.append,
    )
    trained = codebook_usage(tokenizer, held_out)

    losses = [r["loss"] for r in records]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    assert trained["num_tokens"] == 64 * 64
    assert trained["usage"] >= 0.8 and not trained["low_usage"], trained
    assert trained["num_used"] >= untrained["num_used"]
    assert trained["perplexity"] > 1.5 * untrained["perplexity"]
    assert not tokenizer.training


def test_codebook_usage_flags_collapse(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    tokenizer = VQKD(vqkd_tiny(img_size=32, patch_size=8, num_codes=16, encoder_depth=1)).eval()
    with torch.no_grad():
        tokenizer.quantize.embedding.weight.copy_(tokenizer.quantize.embedding.weight[:1].expand(16, -1))
    with caplog.at_level(logging.WARNING, logger="preprocessing.vqkd.train"):
        stats = codebook_usage(tokenizer, coloured_shapes(8, 32, seed=2))
    assert stats["num_used"] == 1 and stats["low_usage"]
    assert stats["entropy"] == 0.0 and stats["perplexity"] == 1.0
    assert stats["histogram"].sum() == 8 * 16 and stats["histogram"][0] == 8 * 16
    assert "codebook usage" in caplog.text


def test_train_accepts_batch_iterables_and_stops_when_dry(caplog: pytest.LogCaptureFixture) -> None:
    config = vqkd_tiny(img_size=32, patch_size=8, num_codes=8, encoder_depth=1, teacher_dim=156)
    batches = [coloured_shapes(4, 48, seed=s) for s in range(2)]
    records: list[dict] = []
    train_vqkd(batches, config, HOGColorTeacher(patch_size=8), steps=3, log_every=1, log_fn=records.append)
    assert [r["step"] for r in records] == [1, 2, 3]  # a list is re-iterated

    with caplog.at_level(logging.WARNING, logger="preprocessing.vqkd.train"):
        train_vqkd(iter(batches), config, HOGColorTeacher(patch_size=8), steps=5)
    assert "ran dry" in caplog.text


def test_dead_code_restarts_stop_one_window_before_the_end(caplog: pytest.LogCaptureFixture) -> None:
    config = vqkd_tiny(img_size=32, patch_size=8, num_codes=64, encoder_depth=1, teacher_dim=156)
    with caplog.at_level(logging.INFO, logger="preprocessing.vqkd.train"):
        train_vqkd(
            coloured_shapes(8, 32, seed=0),
            config,
            HOGColorTeacher(patch_size=8),
            steps=7,
            batch_size=4,
            restart_dead_every=2,
        )
    restart_steps = [
        int(r.getMessage().split()[1].rstrip(":")) for r in caplog.records if "re-seeded" in r.getMessage()
    ]
    assert restart_steps == [2, 4]  # step 6 would leave re-seeded codes untrained


def test_train_rejects_teacher_dim_mismatch() -> None:
    with pytest.raises(ValueError, match="teacher_dim"):
        train_vqkd(coloured_shapes(4, 32, 0), vqkd_tiny(img_size=32, teacher_dim=100), HOGColorTeacher(), steps=1)


def test_cosine_lr_schedule() -> None:
    lrs = [cosine_lr(step, 100, 10, 1e-3, 1e-5) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_random_resized_crop_boxes_stay_inside_and_in_range() -> None:
    rng = np.random.default_rng(0)
    for height, width in ((64, 64), (40, 100), (100, 20)):
        for _ in range(500):
            top, left, crop_h, crop_w = random_resized_crop_box(height, width, rng)
            assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
            assert crop_h > 0 and crop_w > 0
    areas = [np.prod(random_resized_crop_box(200, 200, rng)[2:]) / 40000 for _ in range(2000)]
    assert 0.07 < min(areas) and max(areas) <= 1.0 and 0.4 < np.mean(areas) < 0.65


def test_views_are_in_unit_range_and_flip_mirrors() -> None:
    images = coloured_shapes(3, 48, seed=3)
    views = training_views(images, 32, np.random.default_rng(0))
    assert views.shape == (3, 3, 32, 32) and views.min() >= 0 and views.max() <= 1
    whole = (0, 0, 48, 48)
    torch.testing.assert_close(
        render_view(images[0], whole, True, 48), render_view(images[0], whole, False, 48).flip(-1)
    )
    plain = resize_batch(images, 48)
    torch.testing.assert_close(plain[0], torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        resize_batch(images.astype(np.float32), 32)
