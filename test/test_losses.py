"""lechpe_model.losses against hand-computed values (eq. 1-9) and gradient flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lechpe_model import losses
from lechpe_model.bins import BinSpec, angle_to_bin
from lechpe_model.network import LECHPENet

# Tiny bins: 4 bins of 5 deg over [-10, 10], centres -7.5, -2.5, 2.5, 7.5.
SPEC = BinSpec(num_bins=4, bin_width=5.0, angle_limit=10.0)
CENTERS = torch.tensor(SPEC.centers, dtype=torch.float64)


def _tiny_case():
    """One sample; softmax of each head and the targets chosen for easy arithmetic."""
    logits = torch.log(
        torch.tensor(
            [
                [0.25, 0.25, 0.25, 0.25],  # yaw: decoded 0
                [0.1, 0.2, 0.3, 0.4],  # pitch: decoded -0.75 - 0.5 + 0.75 + 3 = 2.5
                [0.125, 0.125, 0.125, 0.625],  # roll: decoded (-7.5 - 2.5 + 2.5 + 37.5) / 8 = 3.75
            ],
            dtype=torch.float64,
        )
    ).unsqueeze(0)
    target = torch.tensor([[3.0, -6.0, 7.5]], dtype=torch.float64)  # bins 2, 0, 3
    return logits, target


def test_multi_loss_hand_computed():
    logits, target = _tiny_case()
    total, parts = losses.multi_loss(logits, target, CENTERS, alpha=0.5, bin_width=5.0)
    expected = {
        "yaw_cls": math.log(4.0),  # -log 0.25
        "yaw_reg": 9.0,  # (0 - 3)^2
        "pitch_cls": math.log(10.0),  # -log 0.1
        "pitch_reg": 72.25,  # (2.5 + 6)^2
        "roll_cls": math.log(1.6),  # -log 0.625
        "roll_reg": 14.0625,  # (3.75 - 7.5)^2
    }
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value, rel=1e-12), key
    for name in ("yaw", "pitch", "roll"):
        want = expected[f"{name}_cls"] + 0.5 * expected[f"{name}_reg"]
        assert parts[name].item() == pytest.approx(want, rel=1e-12)
    assert total.item() == pytest.approx(sum(parts[n].item() for n in ("yaw", "pitch", "roll")))


def test_multi_loss_averages_over_the_batch():
    logits, target = _tiny_case()
    logits2 = logits.repeat(2, 1, 1)
    target2 = torch.cat([target, torch.tensor([[-3.0, 9.0, -9.0]], dtype=torch.float64)])
    _, parts = losses.multi_loss(logits2, target2, CENTERS, alpha=1.0, bin_width=5.0)
    # second sample: bins 1, 3, 0 -> CE log 4, -log 0.4, -log 0.125; errors 3, 6.5, 12.75
    assert parts["yaw_cls"].item() == pytest.approx(math.log(4.0))
    assert parts["pitch_cls"].item() == pytest.approx((math.log(10.0) - math.log(0.4)) / 2)
    assert parts["roll_cls"].item() == pytest.approx((math.log(1.6) + math.log(8.0)) / 2)
    assert parts["yaw_reg"].item() == pytest.approx((9.0 + 9.0) / 2)
    assert parts["pitch_reg"].item() == pytest.approx((72.25 + 6.5**2) / 2)
    assert parts["roll_reg"].item() == pytest.approx((14.0625 + 12.75**2) / 2)


def test_target_bins_matches_numpy_angle_to_bin():
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(-110, 110, 500), np.arange(-99, 100, 3.0), [99.0, -99.0]])
    centers = torch.tensor(BinSpec().centers)
    got = losses.target_bins(torch.tensor(angles), centers, 3.0).numpy()
    np.testing.assert_array_equal(got, angle_to_bin(angles))


def test_multi_loss_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        losses.multi_loss(torch.zeros(2, 3, 4), torch.zeros(2, 2), CENTERS.float())
    with pytest.raises(ValueError, match="bin_centers"):
        losses.multi_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3), CENTERS.float())


def test_soft_assignment_hand_computed():
    latent = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    centroids = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    q = losses.soft_assignment(latent, centroids)
    # sample 0: d^2 = 1, 4 -> kernels 1/2, 1/5 -> (5/7, 2/7); sample 1: d^2 = 0, 5 -> 1, 1/6 -> (6/7, 1/7)
    np.testing.assert_allclose(q.numpy(), [[5 / 7, 2 / 7], [6 / 7, 1 / 7]], rtol=1e-12)


def test_soft_assignment_far_points_do_not_underflow():
    latent = torch.full((3, 8), 1e4)
    centroids = torch.zeros(5, 8)
    centroids[0] = 1e4 - 1.0
    q = losses.soft_assignment(latent, centroids)
    assert torch.isfinite(q).all()
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, rtol=1e-6)
    assert (q[:, 0] > 0.99).all()


def test_target_distribution_hand_computed_and_detached():
    q = torch.tensor([[5 / 7, 2 / 7], [6 / 7, 1 / 7]], dtype=torch.float64, requires_grad=True)
    p = losses.target_distribution(q)
    assert not p.requires_grad
    f = [11 / 7, 3 / 7]  # column sums of q
    rows = [[(5 / 7) ** 2 / f[0], (2 / 7) ** 2 / f[1]], [(6 / 7) ** 2 / f[0], (1 / 7) ** 2 / f[1]]]
    expected = [[v / sum(r) for v in r] for r in rows]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)


def test_q_rows_sum_to_one_and_p_sharpens():
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(12, 6, generator=gen)
    centroids = torch.randn(4, 6, generator=gen)
    q = losses.soft_assignment(latent, centroids)
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, rtol=1e-6)
    # Make every cluster equally frequent (all cyclic column shifts), so p is
    # q^2 renormalised per row: every non-uniform row gets a strictly higher max.
    balanced = torch.cat([q.roll(shift, dims=1) for shift in range(4)])
    p = losses.target_distribution(balanced)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0, rtol=1e-6)
    assert (p.max(1).values > balanced.max(1).values).all()
    # In general (unequal cluster sizes) the average confidence still rises.
    p_general = losses.target_distribution(q)
    assert p_general.max(1).values.mean() > q.max(1).values.mean()
    np.testing.assert_allclose(p_general.sum(1).numpy(), 1.0, rtol=1e-6)


def test_clustering_kl_hand_computed_zero_and_positive():
    q = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    p = torch.tensor([[0.8, 0.2], [1.0, 0.0]], dtype=torch.float64)
    # batch mean of sum_j p log(p / q); the p = 0 term contributes 0
    expected = (
        0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5) + 1.0 * math.log(1.0 / 0.9)
    ) / 2
    assert losses.clustering_kl(p, q).item() == pytest.approx(expected, rel=1e-12)
    assert losses.clustering_kl(q, q).item() == pytest.approx(0.0, abs=1e-15)
    assert losses.clustering_kl(p, q).item() > 0
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        losses.clustering_kl(p, q[:1])


def _tiny_model_batch():
    torch.manual_seed(0)
    model = LECHPENet("mobilenet_v3_small", num_clusters=3)
    x = torch.randn(4, 3, 64, 64)
    target = torch.tensor(
        [[10.0, -5.0, 3.0], [-40.0, 20.0, 0.0], [0.0, 0.0, 0.0], [80.0, -60.0, 30.0]]
    )
    with torch.no_grad():
        latent = model.eval().encode(x)
    # Centroids near real latents so q is far from uniform and gradients are sizeable.
    model.set_centroids(latent[:3] + 0.1 * torch.randn(3, model.latent_dim))
    return model.train(), x, target


def test_kl_gradients_reach_encoder_and_centroids():
    model, x, target = _tiny_model_batch()
    out = model.forward_train(x)
    result = losses.total_loss(out.logits, out.latent, model.centroids, target, alpha=1.0, beta=5.0)
    assert result.total.item() == pytest.approx(
        result.angle.item() + 5.0 * result.kl.item(), rel=1e-6
    )
    model.zero_grad()
    result.kl.backward()
    assert model.centroids.grad is not None and model.centroids.grad.abs().sum() > 0
    first_conv = next(p for n, p in model.encoder.named_parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    for head in model.heads.values():  # the heads do not enter the KL term
        assert head.weight.grad is None or head.weight.grad.abs().sum() == 0


def test_beta_zero_kl_contributes_nothing():
    model, x, target = _tiny_model_batch()
    out = model.forward_train(x)
    result = losses.total_loss(out.logits, out.latent, model.centroids, target, beta=0.0)
    assert not result.kl.requires_grad
    assert result.kl.item() > 0  # still reported for logging
    assert torch.equal(result.total, result.angle)
    model.zero_grad()
    result.total.backward()
    assert model.centroids.grad is None
    total, _ = losses.multi_loss(out.logits, target, model.bin_centers)
    assert result.total.item() == pytest.approx(total.item())


def test_total_loss_uses_given_p():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 3, 66, generator=gen)
    latent = torch.randn(5, 4, generator=gen)
    centroids = torch.randn(2, 4, generator=gen)
    target = torch.zeros(5, 3)
    q = losses.soft_assignment(latent, centroids)
    p = torch.tensor([[1.0, 0.0]] * 5)
    result = losses.total_loss(logits, latent, centroids, target, beta=2.0, p=p)
    assert result.kl.item() == pytest.approx(losses.clustering_kl(p, q).item())
    default = losses.total_loss(logits, latent, centroids, target, beta=2.0)
    assert default.kl.item() == pytest.approx(
        losses.clustering_kl(losses.target_distribution(q), q).item()
    )
    assert default.kl.item() != pytest.approx(result.kl.item())


def test_kl_sum_equals_batchmean_times_n():
    """Eq. (8) as printed (a sum over samples) is batchmean x N: beta_mean = N * beta_sum."""
    torch.manual_seed(1)
    n, k, d = 6, 4, 5
    latent = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    centroids = torch.randn(k, d, dtype=torch.float64)
    logits = torch.randn(n, 3, 4, dtype=torch.float64)
    target = torch.rand(n, 3, dtype=torch.float64) * 20 - 10
    q = losses.soft_assignment(latent, centroids)
    p = losses.target_distribution(q)
    by_hand = (p * (p / q).log()).sum()
    kl_sum = losses.clustering_kl(p, q, "sum")
    assert kl_sum.item() == pytest.approx(by_hand.item(), rel=1e-12)
    assert losses.clustering_kl(p, q).item() == pytest.approx(by_hand.item() / n, rel=1e-12)
    beta_sum = 3.0
    grads = []
    for reduction, beta in (("sum", beta_sum), ("batchmean", n * beta_sum)):
        out = losses.total_loss(
            logits,
            latent,
            centroids,
            target,
            beta=beta,
            p=p,
            bin_centers=CENTERS,
            bin_width=5.0,
            kl_reduction=reduction,
        )
        (grad,) = torch.autograd.grad(out.total, latent)
        grads.append((out.total.item(), grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.clustering_kl(p, q, "mean")


def test_target_distribution_with_fixed_cluster_frequency():
    q = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    f = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64)
    w = torch.tensor(
        [[0.36 / 2, 0.09 / 1, 0.01 / 4], [0.04 / 2, 0.04 / 1, 0.36 / 4]], dtype=torch.float64
    )
    expected = w / w.sum(1, keepdim=True)
    got = losses.target_distribution(q, f)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    # each row depends only on its own q: one row alone gives the same result
    torch.testing.assert_close(losses.target_distribution(q[1:], f), got[1:])
    # default: f = the column sums of the rows given
    torch.testing.assert_close(
        losses.target_distribution(q), losses.target_distribution(q, q.sum(0))
    )
    with pytest.raises(ValueError, match="cluster_frequency has 2 clusters"):
        losses.target_distribution(q, f[:2])
