"""NMS and batched NMS against a greedy brute-force loop over pairwise IoUs."""

import pytest
import torch

from evaluation.ops import batched_nms, box_iou, nms


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float("nan")


def _reference(boxes, scores, idxs, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(not (idxs[i] == idxs[j] and _iou(boxes[i], boxes[j]) > threshold) for j in keep):
            keep.append(i)
    return keep


def _random_boxes(generator, num, size=50.0):
    xy = torch.rand(num, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(num, 2, generator=generator, dtype=torch.float64) * size / 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # empty boxes: IoU nan, never suppressed
    boxes[1] = torch.tensor([3.0, 3.0, 3.0, 9.0])
    boxes[2] = boxes[3] + torch.tensor([0.0, 0.0, 1e-3, 0.0])  # a near duplicate
    return boxes


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_greedy_loop(threshold, seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(generator, 60)
    scores = torch.rand(60, generator=generator, dtype=torch.float64)
    got = nms(boxes, scores, threshold).tolist()
    assert got == _reference(boxes.tolist(), scores.tolist(), [0] * 60, threshold)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_is_nms_per_category(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(generator, 80)
    scores = torch.rand(80, generator=generator, dtype=torch.float64)
    idxs = torch.randint(0, 4, (80,), generator=generator)
    got = batched_nms(boxes, scores, idxs, 0.5).tolist()
    assert got == _reference(boxes.tolist(), scores.tolist(), idxs.tolist(), 0.5)
    assert len(got) > len(nms(boxes, scores, 0.5))  # categories do not suppress each other


def test_nms_empty_and_iou_values():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
