"""Retrieval recall@k on crafted and random similarity matrices."""

import pytest
import torch

from evaluation.metrics.retrieval import retrieval_recall

# Spec section 10f: rows = images 0-2, columns = texts; text -> image ids [0, 0, 1, 1, 2, 2].
SPEC_SIMILARITY = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.0, 0.0, 0.2],
        [0.7, 0.05, 0.3, 0.6, 0.0, 0.0],
        [0.0, 0.0, 0.1, 0.0, 0.5, 0.4],
    ]
)
SPEC_TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_spec_matrix(chunk_size: int) -> None:
    # TR@1: image 0 -> text 0 (own), image 1 -> text 0 (image 0's), image 2 -> text 4 (own): 2/3.
    # IR@1 per text (best image): t0 -> 0 ok, t1 -> 0 ok, t2 -> 0 wrong, t3 -> 1 ok, t4 -> 2 ok, t5 -> 2 ok: 5/6.
    # k = 5 and 10 are clamped to 3 images / 6 texts, so every query hits.
    metrics = retrieval_recall(SPEC_SIMILARITY, SPEC_TEXT_TO_IMAGE, chunk_size=chunk_size)
    assert metrics["tr_r1"] == pytest.approx(200 / 3)
    assert metrics["ir_r1"] == pytest.approx(500 / 6)
    for key in ("tr_r5", "tr_r10", "ir_r5", "ir_r10"):
        assert metrics[key] == 100.0
    assert metrics["average_score"] == pytest.approx(91.6667, abs=1e-4)


def test_perfect_and_all_wrong() -> None:
    text_to_image = torch.arange(12) // 3  # 4 images x 3 captions
    own = (text_to_image[None, :] == torch.arange(4)[:, None]).float()
    perfect = retrieval_recall(own + 0.01 * torch.rand(4, 12), text_to_image, ks=(1, 2))
    assert all(value == 100.0 for value in perfect.values())
    wrong = retrieval_recall(-own + 0.01 * torch.rand(4, 12), text_to_image, ks=(1,))
    assert wrong == {"tr_r1": 0.0, "ir_r1": 0.0, "average_score": 0.0}


def test_text_retrieval_counts_any_caption_of_the_image() -> None:
    # Image 0's second caption (text 1) ranks first for image 0, its first caption ranks last: still a hit.
    similarity = torch.tensor([[0.1, 0.9, 0.5, 0.4], [0.2, 0.3, 0.8, 0.7]])
    metrics = retrieval_recall(similarity, torch.tensor([0, 0, 1, 1]), ks=(1,))
    assert metrics["tr_r1"] == 100.0
    # Text 0 prefers image 1 (0.2 > 0.1): IR@1 = 3/4.
    assert metrics["ir_r1"] == 75.0


def _brute_force(similarity: torch.Tensor, text_to_image: list[int], k: int) -> tuple[float, float]:
    num_images, num_texts = similarity.shape
    tr_hits = 0
    for image in range(num_images):
        ranked = sorted(range(num_texts), key=lambda t: -similarity[image, t].item())[:k]
        tr_hits += any(text_to_image[t] == image for t in ranked)
    ir_hits = 0
    for text in range(num_texts):
        ranked = sorted(range(num_images), key=lambda i: -similarity[i, text].item())[:k]
        ir_hits += text_to_image[text] in ranked
    return 100.0 * tr_hits / num_images, 100.0 * ir_hits / num_texts


def test_matches_brute_force_on_random_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    similarity = torch.rand(13, 40, generator=generator, dtype=torch.float64)
    text_to_image = torch.randint(0, 13, (40,), generator=generator)
    text_to_image[:13] = torch.arange(13)  # every image has a caption
    metrics = retrieval_recall(similarity, text_to_image, ks=(1, 3, 5), chunk_size=4)
    for k in (1, 3, 5):
        tr, ir = _brute_force(similarity, text_to_image.tolist(), k)
        assert metrics[f"tr_r{k}"] == pytest.approx(tr)
        assert metrics[f"ir_r{k}"] == pytest.approx(ir)
    assert 0.0 < metrics["tr_r1"] < 100.0


@pytest.mark.parametrize(
    ("similarity", "text_to_image", "message"),
    [
        (torch.zeros(3), torch.tensor([0, 1, 2]), "num_images, num_texts"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), "shape"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "outside"),
        (torch.zeros(3, 3), torch.tensor([0, 1, 1]), "no caption"),
        (torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), torch.tensor([0, 1]), r"similarity\[0, 1\] is nan"),
        (torch.tensor([[0.0, 1.0], [float("-inf"), 1.0]]), torch.tensor([0, 1]), r"similarity\[1, 0\] is -inf"),
    ],
)
def test_rejects_bad_inputs(similarity: torch.Tensor, text_to_image: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_recall(similarity, text_to_image)


def _pessimistic_brute_force(similarity: torch.Tensor, text_to_image: list[int], k: int) -> tuple[float, float]:
    """Recall@k with equal scores ordered wrong-first: sort by (score descending, correct last)."""
    num_images, num_texts = similarity.shape
    tr_hits = 0
    for image in range(num_images):
        order = sorted(range(num_texts), key=lambda t: (-similarity[image, t].item(), text_to_image[t] == image))
        tr_hits += any(text_to_image[t] == image for t in order[:k])
    ir_hits = 0
    for text in range(num_texts):
        order = sorted(range(num_images), key=lambda i: (-similarity[i, text].item(), i == text_to_image[text]))
        ir_hits += text_to_image[text] in order[:k]
    return 100.0 * tr_hits / num_images, 100.0 * ir_hits / num_texts


def test_ties_count_against_the_correct_item_whatever_the_order() -> None:
    # Scores on a grid of 3 values: many ties. The result must equal the wrong-first brute force, and must not
    # change when rows and columns are shuffled.
    generator = torch.Generator().manual_seed(1)
    similarity = torch.randint(0, 3, (9, 30), generator=generator).double()
    text_to_image = torch.randint(0, 9, (30,), generator=generator)
    text_to_image[:9] = torch.arange(9)
    metrics = retrieval_recall(similarity, text_to_image, ks=(1, 2, 5), chunk_size=4)
    for k in (1, 2, 5):
        tr, ir = _pessimistic_brute_force(similarity, text_to_image.tolist(), k)
        assert metrics[f"tr_r{k}"] == pytest.approx(tr)
        assert metrics[f"ir_r{k}"] == pytest.approx(ir)
    rows, cols = torch.randperm(9, generator=generator), torch.randperm(30, generator=generator)
    new_row_of = torch.empty(9, dtype=torch.long)
    new_row_of[rows] = torch.arange(9)  # old image id -> its row after shuffling
    shuffled = retrieval_recall(similarity[rows][:, cols], new_row_of[text_to_image[cols]], ks=(1, 2, 5))
    assert shuffled == pytest.approx(metrics)


def test_all_tied_scores_hit_only_when_k_exceeds_the_wrong_candidates() -> None:
    # 2 images x 2 captions, every score equal: a text has 1 wrong image, an image 2 wrong texts.
    metrics = retrieval_recall(torch.zeros(2, 4), torch.tensor([0, 0, 1, 1]), ks=(1, 2, 3))
    assert (metrics["ir_r1"], metrics["ir_r2"]) == (0.0, 100.0)
    assert (metrics["tr_r1"], metrics["tr_r2"], metrics["tr_r3"]) == (0.0, 0.0, 100.0)
