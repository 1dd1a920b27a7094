"""LEC-HPE losses, eq. (1)-(9) of the paper (torch).

Every function works on its own; shapes use N = batch, B = bins per angle,
D = latent dimension, K = clusters.  Angles are degrees, in the order
(yaw, pitch, roll).

* :func:`multi_loss` - per-angle cross-entropy on the ground-truth bin (eq. 2)
  + ``alpha`` * MSE of the decoded angle (eq. 3-5).
* :func:`soft_assignment` - Student-t (one degree of freedom) similarity of
  each latent to each centroid, normalised over clusters per sample (DEC's
  definition; the denominator printed in the paper's eq. 6 is a misprint).
* :func:`target_distribution` - eq. (7), returned detached (a constant for
  the gradient, as in DEC).
* :func:`clustering_kl` - eq. (8), KL(P || Q).
* :func:`total_loss` - eq. (9).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lechpe_model.bins import BinSpec
from lechpe_model.conventions import ANGLE_NAMES


def _check_logits_targets(logits: torch.Tensor, target_deg: torch.Tensor, bin_centers) -> None:
    if logits.dim() != 3 or logits.shape[1] != 3:
        raise ValueError(f"logits must be (N, 3, B), got {tuple(logits.shape)}")
    if target_deg.shape != (logits.shape[0], 3):
        raise ValueError(
            f"target_deg must be (N, 3) = ({logits.shape[0]}, 3) degrees, got "
            f"{tuple(target_deg.shape)}"
        )
    if bin_centers.shape != (logits.shape[2],):
        raise ValueError(
            f"bin_centers must be ({logits.shape[2]},) to match the logits, got "
            f"{tuple(bin_centers.shape)}"
        )


def target_bins(
    target_deg: torch.Tensor, bin_centers: torch.Tensor, bin_width: float
) -> torch.Tensor:
    """Ground-truth class index of each angle (torch twin of ``bins.angle_to_bin``).

    Args:
        target_deg: ``(...)`` degrees.
        bin_centers: ``(B,)`` degrees; the first bin starts half a width below
            its centre.
        bin_width: degrees.

    Returns:
        ``(...)`` int64 indices in ``[0, B - 1]``.
    """
    lower_edge = bin_centers[0] - bin_width / 2.0
    index = torch.floor((target_deg - lower_edge) / bin_width)
    return index.clamp(0, bin_centers.shape[0] - 1).long()


def decode_expectation(logits: torch.Tensor, bin_centers: torch.Tensor) -> torch.Tensor:
    """Eq. (3) on logits: ``sum_b softmax(logits)_b * centre_b``.

    Args:
        logits: ``(..., B)`` raw head outputs.
        bin_centers: ``(B,)`` degrees.

    Returns:
        ``(...)`` degrees, differentiable.
    """
    return (torch.softmax(logits, dim=-1) * bin_centers).sum(dim=-1)


def multi_loss(
    logits: torch.Tensor,
    target_deg: torch.Tensor,
    bin_centers: torch.Tensor,
    alpha: float = 1.0,
    bin_width: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Classification + regression loss of the three angle heads (eq. 2-5).

    For each angle: ``L = CE(logits, bin(target)) + alpha * MSE(decoded, target)``,
    both averaged over the batch; the result is ``L_yaw + L_pitch + L_roll``.
    The MSE is in squared degrees (eq. 4), the cross-entropy in nats.

    Args:
        logits: ``(N, 3, B)`` head outputs, angle order (yaw, pitch, roll).
        target_deg: ``(N, 3)`` ground-truth degrees (yaw, pitch, roll).
        bin_centers: ``(B,)`` bin centres in degrees.
        alpha: weight of the regression term (the paper uses 1).
        bin_width: bin width in degrees (used to find the target bin).

    Returns:
        ``(total, parts)``: scalar total, and a dict with per-angle tensors
        ``"yaw"``, ``"pitch"``, ``"roll"`` (each ``L_angle``) and
        ``"<angle>_cls"`` (cross-entropy), ``"<angle>_reg"`` (MSE, deg^2).
    """
    bin_centers = bin_centers.to(device=logits.device, dtype=logits.dtype)
    target_deg = target_deg.to(device=logits.device, dtype=logits.dtype)
    _check_logits_targets(logits, target_deg, bin_centers)
    if bin_centers.shape[0] > 1:
        spacing = float(bin_centers[1] - bin_centers[0])
        if not math.isclose(spacing, bin_width, rel_tol=1e-5):
            raise ValueError(
                f"bin_width {bin_width} deg does not match the spacing of bin_centers "
                f"({spacing} deg)"
            )
    bins = target_bins(target_deg, bin_centers, bin_width)
    parts: dict[str, torch.Tensor] = {}
    total = logits.new_zeros(())
    for k, name in enumerate(ANGLE_NAMES):
        cls = F.cross_entropy(logits[:, k], bins[:, k])
        reg = F.mse_loss(decode_expectation(logits[:, k], bin_centers), target_deg[:, k])
        parts[f"{name}_cls"] = cls
        parts[f"{name}_reg"] = reg
        parts[name] = cls + alpha * reg
        total = total + parts[name]
    return total, parts


def soft_assignment(latent: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Student-t soft assignment q (DEC, one degree of freedom).

    ``q_ij = (1 + ||l_i - c_j||^2)^-1 / sum_j' (1 + ||l_i - c_j'||^2)^-1``:
    normalised over the clusters of each sample.  Computed as a softmax of
    ``-log(1 + d^2)`` over clusters, which is the same quantity without
    underflow for large distances.  Export-friendly (no data-dependent flow).

    Args:
        latent: ``(N, D)`` latent embeddings l_i.
        centroids: ``(K, D)`` cluster centres c_j.

    Returns:
        ``(N, K)`` probabilities, rows sum to 1.
    """
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not tracing and (
        latent.dim() != 2 or centroids.dim() != 2 or latent.shape[1] != centroids.shape[1]
    ):
        raise ValueError(
            f"latent (N, D) and centroids (K, D) must share D, got {tuple(latent.shape)} "
            f"and {tuple(centroids.shape)}"
        )
    sq_dist = (latent.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(dim=-1)
    return torch.softmax(-torch.log1p(sq_dist), dim=1)


def target_distribution(
    q: torch.Tensor, cluster_frequency: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. (7): ``p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')`` with ``f_j = sum_i q_ij``.

    Squaring sharpens each row towards its most likely cluster, and dividing
    by the cluster frequency ``f_j`` stops large clusters from absorbing
    everything.  By default ``f_j`` sums over the rows given (the batch);
    pass ``cluster_frequency`` to use the frequencies of a larger set instead
    (the whole training set, as DEC): each row of P then depends only on its
    own q and the fixed f (only the ratios of f matter: rows are normalised).

    Args:
        q: ``(N, K)`` soft assignments.
        cluster_frequency: ``(K,)`` f_j, or None for ``q.sum(0)``.

    Returns:
        ``(N, K)`` detached target distribution, rows sum to 1.
    """
    q = q.detach()
    if cluster_frequency is None:
        freq = q.sum(dim=0, keepdim=True)
    else:
        freq = cluster_frequency.detach().to(device=q.device, dtype=q.dtype).reshape(1, -1)
        if freq.shape[1] != q.shape[1]:
            raise ValueError(f"cluster_frequency has {freq.shape[1]} clusters, q has {q.shape[1]}")
    weight = q.pow(2) / freq.clamp_min(torch.finfo(q.dtype).tiny)
    return weight / weight.sum(dim=1, keepdim=True)


#: How :func:`clustering_kl` reduces over the samples of a batch.
KL_REDUCTIONS = ("batchmean", "sum")


def clustering_kl(p: torch.Tensor, q: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """Eq. (8): ``KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij)``.

    ``reduction="sum"`` is eq. (8) as printed (a sum over the samples i);
    ``"batchmean"`` (the default) divides it by the batch size N, so the value
    (and hence a good ``beta``) does not change with the batch size and is on
    the per-sample scale of the multi-loss, whose terms are batch means
    (eq. 4).  The two are the same loss for ``beta_batchmean = N * beta_sum``.
    Terms with ``p_ij = 0`` contribute 0.

    Args:
        p: ``(N, K)`` target distribution (treated as a constant by callers).
        q: ``(N, K)`` soft assignment; gradients flow through it.
        reduction: ``"batchmean"`` or ``"sum"`` (:data:`KL_REDUCTIONS`).

    Returns:
        scalar, in nats, >= 0; 0 exactly when P = Q.
    """
    if p.shape != q.shape or q.dim() != 2:
        raise ValueError(f"p and q must both be (N, K), got {tuple(p.shape)} and {tuple(q.shape)}")
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
    return F.kl_div(log_q, p, reduction=reduction)


class LossOutput(NamedTuple):
    """Result of :func:`total_loss` (all scalars)."""

    total: torch.Tensor  #: eq. (9)
    angle: torch.Tensor  #: L_yaw + L_pitch + L_roll
    parts: dict[str, torch.Tensor]  #: per-angle parts from :func:`multi_loss`
    kl: torch.Tensor  #: KL(P || Q); detached when beta == 0


def total_loss(
    logits: torch.Tensor,
    latent: torch.Tensor,
    centroids: torch.Tensor,
    target_deg: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.0,
    p: torch.Tensor | None = None,
    *,
    bin_centers: torch.Tensor | None = None,
    bin_width: float = 3.0,
    kl_reduction: str = "batchmean",
) -> LossOutput:
    """Eq. (9): ``L_yaw + L_pitch + L_roll + beta * KL(P || Q)``.

    Args:
        logits: ``(N, 3, B)``.
        latent: ``(N, D)`` encoder outputs.
        centroids: ``(K, D)``.
        target_deg: ``(N, 3)`` degrees.
        alpha: regression weight (eq. 5).
        beta: clustering weight; 0 in stage 1.  With ``beta == 0`` the KL is
            still reported (detached) but adds nothing and no gradient.
        p: ``(N, K)`` target distribution; computed from this batch's q when
            None.
        bin_centers: ``(B,)`` degrees; default: B bins of ``bin_width``
            centred on 0.
        bin_width: degrees.
        kl_reduction: ``"batchmean"`` or ``"sum"`` (eq. 8 as printed), see
            :func:`clustering_kl`.
    """
    if bin_centers is None:
        num_bins = logits.shape[-1]
        spec = BinSpec(num_bins, bin_width, num_bins * bin_width / 2.0)
        bin_centers = torch.as_tensor(spec.centers, dtype=logits.dtype, device=logits.device)
    angle, parts = multi_loss(logits, target_deg, bin_centers, alpha=alpha, bin_width=bin_width)
    if beta == 0:
        with torch.no_grad():
            q = soft_assignment(latent, centroids)
            kl = clustering_kl(target_distribution(q) if p is None else p, q, kl_reduction)
        return LossOutput(angle, angle, parts, kl)
    q = soft_assignment(latent, centroids)
    p = target_distribution(q) if p is None else p.detach()
    kl = clustering_kl(p, q, kl_reduction)
    return LossOutput(angle + beta * kl, angle, parts, kl)
