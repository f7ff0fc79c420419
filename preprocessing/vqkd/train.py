"""Training loop and codebook-usage report for the VQ-KD tokenizer (BEiT v2, arXiv:2208.06366).

Recipe after microsoft/unilm `beit2/run_vqkd_training.py` + `engine_for_vqkd.py`: AdamW (betas 0.9/0.99,
weight decay 1e-4, none on 1-D parameters and position/cls embeddings), per-step linear warmup then cosine to
`min_lr`, random-resized-crop + flip views, loss = cosine distance to the teacher + commitment. Additions
from the project spec (tokenizer_mdm.md section 6): the k-means init pools >= 10*K vectors over several
batches instead of one, and codes that no token used over a window of steps can be re-seeded.

Nothing here prints; progress goes to the `logging` logger and to an optional `log_fn` callback.
"""

import logging
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from beit3_core.runtime.schedule import cosine_with_warmup
from preprocessing.vqkd.augment import resize_batch, training_views
from preprocessing.vqkd.model import VQKD, VQKDConfig

__all__ = ["codebook_usage", "train_vqkd"]

logger = logging.getLogger(__name__)

Images = np.ndarray | Iterable[np.ndarray]


def _batches(images: Images, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled batches from an array; passes over an iterable of batches (stops if it runs dry)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        while True:
            order = rng.permutation(len(images))
            for start in range(0, max(1, len(order) - batch_size + 1), batch_size):
                yield images[order[start : start + batch_size]]
    while True:
        empty = True
        for batch in images:
            empty = False
            yield np.asarray(batch)
        if empty:  # a one-shot iterator is exhausted
            return


def _build_optimizer(model: VQKD, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    no_decay_names = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in no_decay_names else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


@torch.no_grad()
def _pooled_kmeans_init(
    model: VQKD, stream: Iterator[np.ndarray], rng: np.random.Generator, device: torch.device, seed: int
) -> None:
    """Initializes the codebook by k-means over >= 10*K encoder vectors from up to 64 augmented batches."""
    wanted, vectors = 10 * model.num_codes, []
    while sum(v.shape[0] for v in vectors) < wanted and len(vectors) < 64:
        batch = next(stream, None)
        if batch is None:
            break
        views = training_views(batch, model.config.img_size, rng).to(device)
        vectors.append(model.encode_features(views).reshape(-1, model.config.code_dim))
    if not vectors:
        raise ValueError("no images to initialize the codebook from")
    pooled = torch.cat(vectors)
    if pooled.shape[0] < wanted:
        logger.warning("k-means init on %d vectors, fewer than 10 x %d codes", pooled.shape[0], model.num_codes)
    model.quantize.kmeans_init(pooled, generator=torch.Generator().manual_seed(seed))


def _log(out: dict[str, torch.Tensor], step: int, lr: float, log_fn: Callable[[dict], None] | None) -> None:
    record = {key: float(out[key].detach()) for key in ("loss", "rec_loss", "commit_loss")}  # host sync
    record.update(step=step, lr=lr, batch_codes_used=int(out["tokens"].unique().numel()))
    logger.info("vqkd step %d: %s", step, record)
    if log_fn is not None:
        log_fn(record)


def train_vqkd(
    images: Images,
    config: VQKDConfig,
    teacher: nn.Module,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    min_lr: float = 1e-5,
    warmup_steps: int | None = None,
    weight_decay: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    crop_scale: tuple[float, float] = (0.08, 1.0),
    seed: int = 0,
    device: str | torch.device = "cpu",
    restart_dead_every: int = 0,
    log_every: int = 50,
    log_fn: Callable[[dict[str, float]], None] | None = None,
) -> VQKD:
    """Trains a VQ-KD tokenizer from scratch against a frozen teacher.

    Args:
        images: uint8 [N, H, W, 3] (sampled in shuffled epochs), or an iterable of uint8 [B, H, W, 3] batches
            (re-iterated when it ends; training stops early, with a warning, if it yields nothing more).
        config: tokenizer config; `teacher_dim` must equal the teacher's output size.
        teacher: frozen module `images [B, 3, S, S] in [0, 1] -> [B, N, teacher_dim]` on the tokenizer grid.
        steps: optimizer steps.
        batch_size: images per step (array input only).
        lr: peak learning rate (5e-4 suits vqkd_tiny; upstream uses 2e-4 for the base model at batch 512).
        min_lr: final learning rate of the cosine schedule.
        warmup_steps: linear warmup length; default 10% of `steps`.
        weight_decay: AdamW decay on matrices.
        betas: AdamW betas.
        crop_scale: area range of the random resized crop.
        seed: seeds the initialization, augmentation and k-means.
        device: where to train.
        restart_dead_every: every this many steps, re-seed the codes that no token of those steps used
            (0 = never, as upstream). The last restart comes at least this many steps before the end, so
            re-seeded codes are always trained (and their usage rechecked) before training stops.
        log_every: steps between log records (each costs a host sync).
        log_fn: receives each log record (`step`, `lr`, `loss`, `rec_loss`, `commit_loss`, `batch_codes_used`).

    Returns:
        The trained tokenizer, in eval mode, on `device`.
    """
    if getattr(teacher, "output_dim", config.teacher_dim) != config.teacher_dim:
        raise ValueError(f"teacher output_dim={teacher.output_dim} != config.teacher_dim={config.teacher_dim}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(device)
    model = VQKD(config).to(device)
    teacher = teacher.to(device).eval()
    stream = _batches(images, batch_size, rng)
    if config.kmeans_iters > 0:
        _pooled_kmeans_init(model, stream, rng, device, seed)
    optimizer = _build_optimizer(model, lr, weight_decay, betas)
    warmup = max(1, int(0.1 * steps)) if warmup_steps is None else warmup_steps
    window_counts = torch.zeros(config.num_codes, dtype=torch.int64, device=device)  # code hits since last restart
    model.train()
    for step in range(steps):
        batch = next(stream, None)
        if batch is None:
            logger.warning("image stream ran dry after %d of %d steps", step, steps)
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_with_warmup(step, steps, warmup, lr, min_lr)
        views = training_views(batch, config.img_size, rng, crop_scale).to(device)
        out = model(views, teacher(views))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if restart_dead_every:
            window_counts += torch.bincount(out["tokens"].flatten(), minlength=config.num_codes)
            # No restart in the last window: a code re-seeded there would get no training step and its EMA
            # would never settle, so the final codebook holds only codes that were trained.
            if (step + 1) % restart_dead_every == 0 and step + 1 <= steps - restart_dead_every:
                num_restarted = model.quantize.restart_codes(window_counts == 0, out["z"].flatten(0, 1))
                logger.info("step %d: re-seeded %d dead codes", step + 1, num_restarted)
                window_counts.zero_()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            _log(out, step + 1, optimizer.param_groups[0]["lr"], log_fn)
    return model.eval()


@torch.no_grad()
def codebook_usage(
    tokenizer: VQKD, images: np.ndarray | torch.Tensor, batch_size: int = 64, min_usage: float = 0.5
) -> dict:
    """Code statistics of a tokenizer on (held-out) images, resized whole to the tokenizer resolution.

    Args:
        tokenizer: the tokenizer (its mode is left unchanged; `encode` never updates the codebook).
        images: uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1].
        batch_size: images per `encode` call.
        min_usage: usage fraction under which `low_usage` is set and a warning logged.

    Returns:
        `num_codes`, `num_tokens`, `num_used`, `usage` (fraction of codes seen at least once), `entropy`
        (nats), `perplexity` (exp entropy: the effective number of codes), `histogram` (int64 numpy [K]) and
        `low_usage` (bool; the caller decides whether to fail).
    """
    device = next(tokenizer.parameters()).device
    histogram = torch.zeros(tokenizer.num_codes, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        views = resize_batch(images[start : start + batch_size], tokenizer.config.img_size).to(device)
        histogram += torch.bincount(tokenizer.encode(views).flatten().cpu(), minlength=tokenizer.num_codes)
    num_tokens = int(histogram.sum())
    probs = histogram[histogram > 0].double() / max(num_tokens, 1)
    entropy = float(-(probs * probs.log()).sum())
    num_used = int((histogram > 0).sum())
    stats = {
        "num_codes": tokenizer.num_codes,
        "num_tokens": num_tokens,
        "num_used": num_used,
        "usage": num_used / tokenizer.num_codes,
        "entropy": entropy,
        "perplexity": math.exp(entropy),
        "histogram": histogram.numpy(),
        "low_usage": num_used / tokenizer.num_codes < min_usage,
    }
    if stats["low_usage"]:
        logger.warning(
            "VQ-KD codebook usage %.1f%% (%d of %d codes) is under %.0f%%: the tokenizer collapsed or saw too "
            "few images",
            100 * stats["usage"],
            num_used,
            tokenizer.num_codes,
            100 * min_usage,
        )
    return stats
