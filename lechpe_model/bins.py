"""Angle bins of the classification heads and their decoding (NumPy only).

Each head classifies one angle into ``num_bins`` bins of ``bin_width`` degrees
covering ``[-angle_limit, +angle_limit]`` (66 bins of r = 3 deg over
[-99, +99] in the paper).  Bin ``i`` (0-based) covers
``[-angle_limit + i * r, -angle_limit + (i + 1) * r)`` and its centre is
``-angle_limit + (i + 0.5) * r`` (-97.5 ... +97.5 for the default bins).

Decoding is the paper's eq. (3): the expectation of the bin centres under the
softmax, ``r * sum_i S_i * (i - (1 + C) / 2)`` with 1-based ``i``.  Some peer
code (Hopenet-style ``sum_i S_i * i * 3 - 99``) takes the expectation over the
bins' *left edges* instead, which reads 1.5 deg (half a bin) lower than the
centres for every input; this package uses the centres everywhere (training
loss, inference, export).

This module has no torch dependency so that ONNX Runtime / TensorRT backends
can decode on a robot without PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BinSpec:
    """Bin layout shared by the heads, the losses and the decoders.

    Attributes:
        num_bins: number of classes per angle head (C in eq. 3).
        bin_width: width of one bin in degrees (r in eq. 3).
        angle_limit: the bins cover ``[-angle_limit, +angle_limit]`` degrees;
            must equal ``num_bins * bin_width / 2``.
    """

    num_bins: int = 66
    bin_width: float = 3.0
    angle_limit: float = 99.0

    def __post_init__(self) -> None:
        if int(self.num_bins) != self.num_bins or self.num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {self.num_bins!r}")
        if not self.bin_width > 0:
            raise ValueError(f"bin_width must be > 0 degrees, got {self.bin_width!r}")
        span = self.num_bins * self.bin_width
        if not np.isclose(span, 2.0 * self.angle_limit):
            raise ValueError(
                f"bins do not tile [-angle_limit, angle_limit]: num_bins * bin_width = "
                f"{span} deg but 2 * angle_limit = {2.0 * self.angle_limit} deg"
            )

    @property
    def centers(self) -> np.ndarray:
        """``(num_bins,)`` float64 bin centres in degrees (-97.5 ... 97.5 by default)."""
        return -self.angle_limit + (np.arange(self.num_bins, dtype=np.float64) + 0.5) * (
            self.bin_width
        )


#: The paper's bins: 66 bins of 3 deg over [-99, +99].
DEFAULT_BINS = BinSpec()


def bin_centers(spec: BinSpec = DEFAULT_BINS) -> np.ndarray:
    """``(num_bins,)`` float64 bin centres in degrees."""
    return spec.centers


def angle_to_bin(angles, spec: BinSpec = DEFAULT_BINS) -> np.ndarray:
    """Class index of each angle: ``floor((a + limit) / r)`` clipped to ``[0, C - 1]``.

    Args:
        angles: degrees, any shape.

    Returns:
        int64 array of the same shape.  Angles outside the range land in the
        first/last bin (such samples are excluded from training, see
        :func:`in_range`).
    """
    angles = np.asarray(angles, dtype=np.float64)
    index = np.floor((angles + spec.angle_limit) / spec.bin_width)
    return np.clip(index, 0, spec.num_bins - 1).astype(np.int64)


def _check_probs(probs, spec: BinSpec) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 0 or probs.shape[-1] != spec.num_bins:
        raise ValueError(
            f"expected probabilities with {spec.num_bins} bins on the last axis, "
            f"got shape {probs.shape}"
        )
    return probs


def decode_expectation(probs, spec: BinSpec = DEFAULT_BINS) -> np.ndarray:
    """Eq. (3): expected bin centre under the bin probabilities.

    Args:
        probs: ``(..., num_bins)`` softmax probabilities (rows sum to 1).

    Returns:
        ``(...)`` float64 angles in degrees.
    """
    probs = _check_probs(probs, spec)
    return probs @ spec.centers


def decode_std(probs, spec: BinSpec = DEFAULT_BINS) -> np.ndarray:
    """Standard deviation of the bin centres under the bin probabilities.

    A per-angle uncertainty in degrees: 0 for a one-hot distribution, large
    when the heads spread their mass over distant bins.

    Args:
        probs: ``(..., num_bins)`` softmax probabilities.

    Returns:
        ``(...)`` float64 standard deviations in degrees.
    """
    probs = _check_probs(probs, spec)
    mean = probs @ spec.centers
    var = np.sum(probs * (spec.centers - mean[..., None]) ** 2, axis=-1)
    return np.sqrt(np.maximum(var, 0.0))


def in_range(angles, limit: float = 99.0) -> np.ndarray:
    """Mask of samples whose three angles all satisfy ``|angle| <= limit``.

    Args:
        angles: ``(..., 3)`` degrees (yaw, pitch, roll).

    Returns:
        ``(...)`` bool mask (NaN angles count as out of range).
    """
    angles = np.asarray(angles, dtype=np.float64)
    if angles.ndim == 0 or angles.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) angles (yaw, pitch, roll), got shape {angles.shape}")
    return np.all(np.abs(angles) <= limit, axis=-1)
