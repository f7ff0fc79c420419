"""Image-text retrieval recall: TR@k (image -> text) and IR@k (text -> image) from a similarity matrix.

Protocol of the COCO 5k / Flickr30K 1k retrieval benchmarks as used by BEiT-3 (Wang et al. 2022, arXiv
2208.10442); checked against microsoft/unilm `beit3/engine_for_finetuning.py` (`RetrievalHandler.after_eval`).
Each image has several captions:

- TR@k: fraction of images for which at least one of their captions is among the k highest-scoring texts.
- IR@k: fraction of captions whose image is among the k highest-scoring images.

Values are in percent; `average_score` (mean of the six recalls) is the model-selection key. k is clamped to the
number of candidates (the reference calls top-10 unconditionally and fails on tiny sets).

Ties are broken against the correct item, so results do not depend on the order of rows and columns: a wrong
candidate scoring exactly as high as the correct one ranks before it. A query hits at k when fewer than k wrong
candidates score at least as high as its best correct candidate (for TR, its best-scoring own caption). Without
ties this is the reference's `topk` result; with ties the reference's order is implementation-defined, and this
rule gives the lowest recall any tie order could give.

The matrix is scanned in row and column chunks, so only chunk-sized masks are materialised besides the
caller's matrix (a 5,000 x 25,000 float32 matrix is 500 MB; a full argsort of it would be another 1 GB).
`retrieval_recall_from_features` goes one step further for dual encoders: it computes each chunk of scores
from the image and text features when it is needed, so no more than one chunk of scores exists at a time.
"""

from collections.abc import Callable

import torch

ScoreRows = Callable[[int, int], torch.Tensor]
"""(start, end) -> scores of rows start..end: [C, num_texts] for images, [C, num_images] for texts."""

DEFAULT_KS = (1, 5, 10)


@torch.no_grad()
def retrieval_recall(
    similarity: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Text and image retrieval recall at k.

    Args:
        similarity: Scores of shape [num_images, num_texts]; higher means more similar.
        text_to_image: Integer tensor of shape [num_texts]: the image row each caption belongs to.
        ks: Cut-offs to report.
        chunk_size: Rows (for TR) or columns (for IR) scored at a time.

    Returns:
        `tr_r{k}` and `ir_r{k}` for every k, in percent, and `average_score`, their mean.

    Raises:
        ValueError: If shapes disagree, a score is NaN or infinite, ids are out of range, an image has no caption,
            or k < 1.
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [num_images, num_texts], got shape {tuple(similarity.shape)}")
    return _recall(
        lambda s, e: similarity[s:e],
        lambda s, e: similarity[:, s:e].T,
        similarity.shape,
        text_to_image.to(device=similarity.device, dtype=torch.long),
        ks,
        chunk_size,
    )


@torch.no_grad()
def retrieval_recall_from_features(
    image_ID: torch.Tensor,
    text_TD: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """`retrieval_recall` of the scores image_ID @ text_TD.T, computed one chunk of rows at a time.

    At most chunk_size x max(num_images, num_texts) scores exist at once (COCO 5k test with chunks of 1,024:
    1,024 x 25,010 floats, 100 MB, instead of the 500 MB matrix).
    """
    if image_ID.ndim != 2 or text_TD.ndim != 2 or image_ID.shape[1] != text_TD.shape[1]:
        raise ValueError(f"features must be [N, D] of one D, got {tuple(image_ID.shape)} and {tuple(text_TD.shape)}")
    return _recall(
        lambda s, e: image_ID[s:e] @ text_TD.T,
        lambda s, e: text_TD[s:e] @ image_ID.T,
        (image_ID.shape[0], text_TD.shape[0]),
        text_to_image.to(device=image_ID.device, dtype=torch.long),
        ks,
        chunk_size,
    )


def _recall(
    image_rows: ScoreRows,
    text_rows: ScoreRows,
    shape: tuple[int, int],
    text_to_image: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int,
) -> dict[str, float]:
    num_images, num_texts = shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must have shape ({num_texts},), got {tuple(text_to_image.shape)}")
    if num_texts == 0 or num_images == 0:
        raise ValueError("similarity is empty")
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image holds ids outside [0, {num_images})")
    num_captions_I = torch.bincount(text_to_image, minlength=num_images)
    if (num_captions_I == 0).any():
        # Such an image could never be retrieved correctly, which silently lowers TR: almost surely a bad mapping.
        raise ValueError(f"{int((num_captions_I == 0).sum())} images have no caption in text_to_image")
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")

    tr_hits_K = _text_retrieval_hits(image_rows, shape, text_to_image, ks, chunk_size)
    ir_hits_K = _image_retrieval_hits(text_rows, shape, text_to_image, ks, chunk_size)
    metrics = {f"tr_r{k}": 100.0 * hits / num_images for k, hits in zip(ks, tr_hits_K.tolist(), strict=True)}
    metrics |= {f"ir_r{k}": 100.0 * hits / num_texts for k, hits in zip(ks, ir_hits_K.tolist(), strict=True)}
    metrics["average_score"] = sum(metrics.values()) / len(metrics)
    return metrics


def _text_retrieval_hits(
    image_rows: ScoreRows,
    shape: tuple[int, int],
    text_to_image_T: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int,
) -> torch.Tensor:
    """Number of images with one of their captions among their top-k texts, for each k (ties count against)."""
    num_images, _ = shape
    hits_K = torch.zeros(len(ks), dtype=torch.long, device=text_to_image_T.device)
    for start in range(0, num_images, chunk_size):
        scores_CT = image_rows(start, start + chunk_size)
        _check_finite(scores_CT, start, transposed=False)
        image_ids_C = torch.arange(start, start + scores_CT.shape[0], device=text_to_image_T.device)
        own_CT = text_to_image_T[None, :] == image_ids_C[:, None]
        # Every image has a caption (checked), so the best own score is finite.
        best_own_C = scores_CT.masked_fill(~own_CT, float("-inf")).amax(dim=1)
        wrong_above_C = ((scores_CT >= best_own_C[:, None]) & ~own_CT).sum(dim=1)
        del scores_CT, own_CT  # free this chunk before the next one is computed
        for i, k in enumerate(ks):
            hits_K[i] += (wrong_above_C < k).sum()
    return hits_K


def _image_retrieval_hits(
    text_rows: ScoreRows,
    shape: tuple[int, int],
    text_to_image_T: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int,
) -> torch.Tensor:
    """Number of captions whose image is among their top-k images, for each k (ties count against)."""
    _, num_texts = shape
    hits_K = torch.zeros(len(ks), dtype=torch.long, device=text_to_image_T.device)
    for start in range(0, num_texts, chunk_size):
        scores_CI = text_rows(start, start + chunk_size)
        _check_finite(scores_CI, start, transposed=True)
        own_C1 = scores_CI.gather(1, text_to_image_T[start : start + chunk_size, None])
        wrong_above_C = (scores_CI >= own_C1).sum(dim=1) - 1  # minus the own image itself
        del scores_CI
        for i, k in enumerate(ks):
            hits_K[i] += (wrong_above_C < k).sum()
    return hits_K


def _check_finite(scores: torch.Tensor, start: int, transposed: bool) -> None:
    """Raises naming the first NaN or infinite score by its (image, text) position in the whole matrix; `scores`
    are rows start.. of the matrix, or of its transpose."""
    bad = ~torch.isfinite(scores)
    if bad.any():
        r, c = bad.nonzero()[0].tolist()
        row, col = (c, start + r) if transposed else (start + r, c)
        raise ValueError(f"similarity[{row}, {col}] is {scores[r, c].item()}; every score must be finite")
