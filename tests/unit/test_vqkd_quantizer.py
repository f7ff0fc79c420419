"""Norm-EMA quantizer of preprocessing.vqkd: EMA arithmetic, k-means init, straight-through gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from preprocessing.vqkd.quantizer import NormEMAQuantizer, spherical_kmeans


def _unit(x: float, y: float) -> tuple[float, float]:
    norm = math.hypot(x, y)
    return x / norm, y / norm


def _quantizer(codes: list[tuple[float, float]], decay: float) -> NormEMAQuantizer:
    quantizer = NormEMAQuantizer(num_codes=len(codes), code_dim=2, decay=decay, kmeans_iters=0)
    quantizer.embedding.weight.copy_(torch.tensor(codes))
    return quantizer.train()


def test_ema_update_matches_hand_computation() -> None:
    quantizer = _quantizer([(1.0, 0.0), (0.0, 1.0)], decay=0.75)
    z = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]]])  # unit vectors [1, 4, 2]

    zq, loss, tokens = quantizer(z)

    assert tokens.tolist() == [[0, 0, 1, 1]]
    # Output and loss use the codebook from before the update.
    assert torch.equal(zq, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]]))
    assert loss.item() == pytest.approx((0.2**2 + 0.6**2) * 2 / 8)
    # Code 0: members (1, 0), (0.8, 0.6) -> normalized mean, then a quarter step on the sphere.
    mean0 = _unit(1.8, 0.6)
    new0 = _unit(0.75 * 1.0 + 0.25 * mean0[0], 0.75 * 0.0 + 0.25 * mean0[1])
    mean1 = _unit(0.6, 1.8)
    new1 = _unit(0.75 * 0.0 + 0.25 * mean1[0], 0.75 * 1.0 + 0.25 * mean1[1])
    torch.testing.assert_close(quantizer.embedding.weight, torch.tensor([new0, new1]))
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor([0.5, 0.5]))  # 0.75 * 0 + 0.25 * 2


def test_unused_code_keeps_its_value_and_eval_changes_nothing() -> None:
    quantizer = _quantizer([(1.0, 0.0), (0.0, 1.0)], decay=0.99)
    z = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.6, -0.8]]])
    quantizer(z)
    mean0 = _unit(3.2, -0.8)
    torch.testing.assert_close(
        quantizer.embedding.weight[0], torch.tensor(_unit(0.99 + 0.01 * mean0[0], 0.01 * mean0[1]))
    )
    assert quantizer.embedding.weight[1].tolist() == [0.0, 1.0]
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor([0.04, 0.0]))

    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()(z)
    assert all(torch.equal(before[k], v) for k, v in quantizer.state_dict().items())


def test_kmeans_keeps_empty_clusters_sane() -> None:
    # Two distinct directions, four centres: duplicate start centres get no members and must stay put.
    z = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    centres = spherical_kmeans(z, num_codes=4, num_iters=5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centres).all()
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(4))
    assert {tuple(row) for row in centres.tolist()} == {(1.0, 0.0), (0.0, 1.0)}

    few = F.normalize(torch.randn(3, 8), dim=1)  # fewer vectors than codes: sampled with replacement
    centres = spherical_kmeans(few, num_codes=16, num_iters=3)
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(16))


def test_lazy_kmeans_init_runs_once_in_training_only() -> None:
    quantizer = NormEMAQuantizer(num_codes=4, code_dim=8, kmeans_iters=5)
    z = F.normalize(torch.randn(2, 16, 8), dim=-1)
    quantizer.eval()(z)
    assert quantizer.embedding.initted.item() == 0.0
    quantizer.train()(z)
    assert quantizer.embedding.initted.item() == 1.0
    # After init every code is a k-means centre of z: each is the normalized mean of some of its vectors.
    best = (quantizer.embedding.weight @ z.reshape(-1, 8).t()).amax(dim=1)
    assert (best > 0.3).all()


def test_straight_through_gradient_is_identity() -> None:
    quantizer = NormEMAQuantizer(num_codes=8, code_dim=4, beta=0.0, kmeans_iters=0).train()
    z = torch.randn(2, 5, 4, requires_grad=True)
    upstream = torch.randn(2, 5, 4)
    codes = quantizer.embedding.weight.clone()  # the forward EMA-updates the codebook after the lookup
    zq, _, tokens = quantizer(z)
    (zq * upstream).sum().backward()
    reference = z.detach().clone().requires_grad_(True)
    (F.normalize(reference, dim=-1) * upstream).sum().backward()
    torch.testing.assert_close(z.grad, reference.grad)  # d zq / d l2norm(z) == identity
    torch.testing.assert_close(zq.detach(), codes[tokens])  # forward value = the code


def test_restart_codes_reseeds_only_dead_codes() -> None:
    quantizer = NormEMAQuantizer(num_codes=4, code_dim=3, kmeans_iters=0)
    before = quantizer.embedding.weight.clone()
    z = F.normalize(torch.randn(10, 3), dim=1)
    dead = torch.tensor([False, True, False, True])
    assert quantizer.restart_codes(dead, z) == 2
    weight = quantizer.embedding.weight
    assert torch.equal(weight[~dead], before[~dead])
    for row in weight[dead]:
        assert torch.isclose(z @ row, torch.ones(10), atol=1e-6).any()  # a copy of some z row
