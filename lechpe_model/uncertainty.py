"""A calibrated per-angle uncertainty (degrees, read as a standard deviation).

The network's raw spread (the standard deviation of each angle's bin softmax,
``bins.decode_std``) is dominated by the tails of the softmax: for a briefly
trained model it is 30-45 deg while the errors are 3-15 deg, and per face it
does not rank the errors (it is even anti-correlated: a face at the edge of the
bin range has a truncated, narrower softmax but a larger error).

This module maps what every backend outputs - the angles, the raw spreads,
the soft cluster assignment and, for a model with one, the error head's
``log |error|`` - to ``sigma``, an estimate of the error's standard
deviation, by a per-angle log-linear model fitted on **validation identities**
(never the test ones)::

    log sigma_k = w_k . features + log s_k

``features`` (:data:`FEATURE_NAMES`): 1, the log raw spreads of the three
angles, ``|angle| / 90`` and ``(|angle| / 90)^2`` of yaw and pitch, ``|roll| /
90`` and the cluster confidence ``1 - H(q) / log K``; with an error head
(:data:`ERROR_HEAD_FEATURE_NAMES`, kind ``loglinear-v2``) also its three
outputs. ``w_k`` is the ridge least-squares fit of ``log |error_k|`` (for a
Gaussian error, ``E log|e| = log sigma - 0.64``, so the fit is ``log sigma`` up
to a constant) and ``s_k`` sets that constant so that 68.27 % of the validation
errors lie within ``+-sigma`` (the coverage of one standard deviation).

The error head (``network.LECHPENet.error_head``) is a linear map from the
latent embedding (averaged over the crop and its mirror) to ``log |error|`` of
each angle, fitted by :func:`fit_error_head` on other renders of the
validation identities than the log-linear model: the softmax spreads know
little about which faces are hard (a face seen in profile, an occluder over the
eyes), the embedding knows more.

The coefficients live in the checkpoint metadata (``uncertainty_calibration``)
and are applied after the network in NumPy (``apply_calibration``), so the
torch, ONNX Runtime and TensorRT backends publish the same numbers; without
them the raw spread is published unchanged. NumPy only (runs on a robot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Inputs of the log-linear model, in order (w_k has one coefficient each).
FEATURE_NAMES = (
    "bias",
    "log_std_yaw",
    "log_std_pitch",
    "log_std_roll",
    "abs_yaw",
    "abs_pitch",
    "abs_roll",
    "abs_yaw_sq",
    "abs_pitch_sq",
    "confidence",
)

#: Fraction of a Gaussian within +-1 standard deviation.
ONE_SIGMA_COVERAGE = 0.6827

#: The error head's outputs, appended to the features by kind ``loglinear-v2``.
ERROR_HEAD_FEATURE_NAMES = ("log_error_yaw", "log_error_pitch", "log_error_roll")

#: Version of this feature set / formula, stored with the coefficients.
CALIBRATION_KIND = "loglinear-v1"
#: The same with the error head's outputs as three more features.
CALIBRATION_KIND_ERROR_HEAD = "loglinear-v2"
_FEATURES_OF_KIND = {
    CALIBRATION_KIND: FEATURE_NAMES,
    CALIBRATION_KIND_ERROR_HEAD: FEATURE_NAMES + ERROR_HEAD_FEATURE_NAMES,
}

# Floors keep log() finite for a one-hot softmax and a perfect prediction.
_MIN_STD = 0.05
_MIN_ERROR = 0.05
_ANGLES = ("yaw", "pitch", "roll")


def cluster_confidence(assignment: np.ndarray) -> np.ndarray:
    """``1 - H(q) / log K`` per row of ``(N, K)`` ``q`` (1 when K = 1); ``(N,)``."""
    q = np.asarray(assignment, dtype=np.float64)
    k = q.shape[-1]
    if k <= 1:
        return np.ones(q.shape[:-1])
    p = np.clip(q, 1e-12, 1.0)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.clip(1.0 + (p * np.log(p)).sum(axis=-1) / math.log(k), 0.0, 1.0)


def uncertainty_features(
    angles: np.ndarray,
    raw_std: np.ndarray,
    assignment: np.ndarray,
    log_error: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, F)`` float64 inputs of the model (:data:`FEATURE_NAMES`, then
    :data:`ERROR_HEAD_FEATURE_NAMES` when ``log_error`` is given).

    Args:
        angles: ``(N, 3)`` predicted degrees (yaw, pitch, roll).
        raw_std: ``(N, 3)`` standard deviations of the bin softmaxes (degrees).
        assignment: ``(N, K)`` soft cluster assignment q.
        log_error: ``(N, 3)`` the error head's output, or None.
    """
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    raw_std = np.asarray(raw_std, dtype=np.float64).reshape(-1, 3)
    a = np.abs(angles) / 90.0
    columns = [
        np.ones(len(angles)),
        np.log(np.maximum(raw_std, _MIN_STD)),
        a,
        a[:, :2] ** 2,
        cluster_confidence(np.asarray(assignment).reshape(len(angles), -1)),
    ]
    if log_error is not None:
        columns.append(np.asarray(log_error, dtype=np.float64).reshape(-1, 3))
    return np.column_stack(columns)


@dataclass(frozen=True)
class UncertaintyCalibration:
    """Fitted coefficients: ``sigma_k = scale_k * exp(features . weights[k])``.

    Attributes:
        weights: ``(3, F)`` per angle (yaw, pitch, roll).
        scale: ``(3,)`` coverage factors ``s_k``.
        fitted_on: free text (data, faces) for provenance.
        kind: :data:`CALIBRATION_KIND`, or :data:`CALIBRATION_KIND_ERROR_HEAD`
            when the features include the error head's outputs.
    """

    weights: np.ndarray
    scale: np.ndarray
    fitted_on: str = ""
    kind: str = CALIBRATION_KIND

    @property
    def uses_error_head(self) -> bool:
        """True when ``sigma`` needs the error head's ``log_error`` output."""
        return self.kind == CALIBRATION_KIND_ERROR_HEAD

    def to_dict(self) -> dict:
        """JSON-ready dict (the checkpoint metadata field ``uncertainty_calibration``)."""
        return {
            "kind": self.kind,
            "features": list(_FEATURES_OF_KIND[self.kind]),
            "weights": {a: [float(v) for v in self.weights[k]] for k, a in enumerate(_ANGLES)},
            "scale": {a: float(self.scale[k]) for k, a in enumerate(_ANGLES)},
            "coverage": ONE_SIGMA_COVERAGE,
            "fitted_on": str(self.fitted_on),
        }

    @classmethod
    def from_dict(cls, data: object) -> UncertaintyCalibration:
        """Validate a metadata dict; raises ``ValueError`` naming the problem."""
        if not isinstance(data, dict):
            raise ValueError(f"uncertainty_calibration must be a JSON object, got {data!r}")
        kind = data.get("kind")
        if kind not in _FEATURES_OF_KIND:
            raise ValueError(
                f"uncertainty_calibration kind {kind!r} is not supported "
                f"(this code reads {' and '.join(repr(k) for k in _FEATURES_OF_KIND)})"
            )
        names = _FEATURES_OF_KIND[kind]
        if list(data.get("features", [])) != list(names):
            raise ValueError("uncertainty_calibration features differ from this code's")
        weights, scale = data.get("weights"), data.get("scale")
        if not isinstance(weights, dict) or not isinstance(scale, dict):
            raise ValueError("uncertainty_calibration needs 'weights' and 'scale' objects")
        try:
            w = np.array([[float(v) for v in weights[a]] for a in _ANGLES])
            s = np.array([float(scale[a]) for a in _ANGLES])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"uncertainty_calibration has a bad weight or scale: {exc}") from exc
        if w.shape != (3, len(names)) or not np.all(np.isfinite(w)):
            raise ValueError(
                f"uncertainty_calibration weights must be 3 x {len(names)} finite numbers"
            )
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("uncertainty_calibration scale must be finite and > 0")
        return cls(w, s, str(data.get("fitted_on", "")), kind)

    def sigma(
        self,
        angles: np.ndarray,
        raw_std: np.ndarray,
        assignment: np.ndarray,
        log_error: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(N, 3)`` float64 calibrated standard deviations (degrees).

        Raises:
            ValueError: the calibration uses the error head but ``log_error`` is None.
        """
        if not self.uses_error_head:
            log_error = None
        elif log_error is None:
            raise ValueError(
                "this uncertainty calibration uses the error head's output (log_error), "
                "which the network did not give: re-export the ONNX / TensorRT model "
                "from its checkpoint"
            )
        x = uncertainty_features(angles, raw_std, assignment, log_error)
        # Clip the exponent: a wild input must not give inf (kept finite, <= ~1e4 deg).
        return self.scale * np.exp(np.clip(x @ self.weights.T, -20.0, 9.0))


def fit_calibration(
    angles: np.ndarray,
    raw_std: np.ndarray,
    assignment: np.ndarray,
    abs_error: np.ndarray,
    ridge: float = 1e-3,
    coverage: float = ONE_SIGMA_COVERAGE,
    fitted_on: str = "",
    log_error: np.ndarray | None = None,
) -> UncertaintyCalibration:
    """Fit the per-angle log-linear model on validation faces.

    Args:
        angles, raw_std, assignment, log_error: network outputs of N faces (see
            :func:`uncertainty_features`); with ``log_error`` the calibration is
            of kind :data:`CALIBRATION_KIND_ERROR_HEAD`.
        abs_error: ``(N, 3)`` absolute errors (degrees) against the labels.
        ridge: L2 penalty on the non-bias weights (stabilises small sets).
        coverage: fraction of validation errors within +-sigma after scaling.

    Raises:
        ValueError: fewer than 2 * F faces, or non-finite inputs.
    """
    x = uncertainty_features(angles, raw_std, assignment, log_error)
    err = np.asarray(abs_error, dtype=np.float64).reshape(-1, 3)
    if len(x) != len(err):
        raise ValueError(f"{len(x)} predictions but {len(err)} errors")
    if len(x) < 2 * x.shape[1]:
        raise ValueError(f"need at least {2 * x.shape[1]} faces to fit, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(err))):
        raise ValueError("non-finite predictions or errors")
    penalty = ridge * len(x) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    weights = np.zeros((3, x.shape[1]))
    scale = np.zeros(3)
    for k in range(3):
        target = np.log(np.maximum(err[:, k], _MIN_ERROR))
        weights[k] = np.linalg.solve(x.T @ x + penalty, x.T @ target)
        ratio = err[:, k] / np.exp(x @ weights[k])
        scale[k] = max(float(np.quantile(ratio, coverage)), 1e-6)
    kind = CALIBRATION_KIND if log_error is None else CALIBRATION_KIND_ERROR_HEAD
    return UncertaintyCalibration(weights, scale, fitted_on, kind)


def fit_error_head(
    latent: np.ndarray, abs_error: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the error head: ridge regression of ``log |error|`` on the latent.

    Args:
        latent: ``(N, D)`` what the head reads (``LECHPENet.error_head_input``).
        abs_error: ``(N, 3)`` absolute errors (degrees) against the labels.
        ridge: L2 penalty (scikit-learn's ``alpha``; the latent is not standardised).

    Returns:
        ``(weight (3, D), bias (3,))`` float32 for ``LECHPENet.set_error_head``.

    Raises:
        ValueError: mismatched lengths, fewer than 2 faces, non-finite inputs or a
        ridge that is not > 0.
    """
    from sklearn.linear_model import Ridge

    x = np.asarray(latent, dtype=np.float64)
    err = np.asarray(abs_error, dtype=np.float64).reshape(-1, 3)
    if x.ndim != 2 or len(x) != len(err):
        raise ValueError(f"need (N, D) latents and (N, 3) errors, got {x.shape} and {err.shape}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 faces to fit the error head, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(err))):
        raise ValueError("non-finite latents or errors")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    fit = Ridge(alpha=float(ridge)).fit(x, np.log(np.maximum(err, _MIN_ERROR)))
    return fit.coef_.astype(np.float32), fit.intercept_.astype(np.float32)


def apply_calibration(
    calibration: dict | UncertaintyCalibration | None,
    angles: np.ndarray,
    raw_std: np.ndarray,
    assignment: np.ndarray,
    log_error: np.ndarray | None = None,
) -> np.ndarray:
    """The published uncertainty: calibrated sigma, or ``raw_std`` when uncalibrated.

    Args:
        calibration: the metadata field (dict), a fitted object, or None / {}.
        log_error: the error head's output (needed by a ``loglinear-v2`` calibration).

    Returns:
        ``(N, 3)`` float32 degrees.
    """
    if not calibration:
        return np.asarray(raw_std, dtype=np.float32).reshape(-1, 3)
    if isinstance(calibration, dict):
        calibration = UncertaintyCalibration.from_dict(calibration)
    return calibration.sigma(angles, raw_std, assignment, log_error).astype(np.float32)


def rank_and_coverage(sigma: np.ndarray, abs_error: np.ndarray) -> dict:
    """Per angle: Spearman(sigma, |error|), fraction of |error| <= sigma, median sigma.

    Returns:
        ``{"spearman": {angle: rho}, "coverage_1sigma": {...}, "coverage_2sigma": {...},
        "median_sigma": {...}, "faces": N}`` (NaN where undefined).
    """
    from scipy.stats import spearmanr

    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1, 3)
    err = np.asarray(abs_error, dtype=np.float64).reshape(-1, 3)
    out: dict = {"spearman": {}, "coverage_1sigma": {}, "coverage_2sigma": {}, "median_sigma": {}}
    for k, a in enumerate(_ANGLES):
        s, e = sigma[:, k], err[:, k]
        defined = len(s) >= 3 and np.ptp(s) > 0 and np.ptp(e) > 0
        out["spearman"][a] = float(spearmanr(s, e)[0]) if defined else float("nan")
        out["coverage_1sigma"][a] = float(np.mean(e <= s)) if len(s) else float("nan")
        out["coverage_2sigma"][a] = float(np.mean(e <= 2 * s)) if len(s) else float("nan")
        out["median_sigma"][a] = float(np.median(s)) if len(s) else float("nan")
    out["faces"] = int(len(sigma))
    return out


def calibrated_outputs_uncertainty(outputs, metadata) -> np.ndarray:
    """The uncertainty to publish for a backend's ``PoseOutputs`` and model metadata.

    Every backend's outputs go through this one function after the network
    (``pipeline.PoseEstimator``), so all backends publish the same calibration.
    """
    return apply_calibration(
        getattr(metadata, "uncertainty_calibration", None),
        outputs.angles,
        outputs.uncertainty,
        outputs.assignment,
        getattr(outputs, "log_error", None),
    )
