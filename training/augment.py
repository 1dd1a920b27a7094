"""Training augmentation on the uint8 face crop (before the shared preprocessing).

The paper augments "by randomly flipping, blurring, down-sampling and
up-sampling images".  Each operation is applied with its own probability;
all randomness comes from the generator passed in, so a sample's
augmentation is a function of (seed, epoch, index) (see ``training.torch_data``).

* flip: mirror the crop left-right; the label becomes
  ``lechpe_model.conventions.mirror_euler`` (yaw and roll negated);
* blur: Gaussian blur with sigma ~ U(blur_sigma) pixels of the crop;
* resample: shrink by a factor ~ U(resample_scale) (INTER_AREA) and enlarge
  back (INTER_LINEAR): the loss of detail of a distant or low-resolution face.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from lechpe_model.conventions import mirror_euler


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (defaults: paper-style mild)."""

    flip_prob: float = 0.5
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    resample_prob: float = 0.2
    resample_scale: tuple[float, float] = (0.25, 0.75)

    @classmethod
    def from_dict(cls, values: Mapping | None) -> AugmentConfig:
        values = dict(values or {})
        for key in ("blur_sigma", "resample_scale"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


#: No augmentation (validation, test, latent extraction).
NO_AUGMENT = AugmentConfig(flip_prob=0.0, blur_prob=0.0, resample_prob=0.0)


def flip(crop: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a crop left-right and its (yaw, pitch, roll) label."""
    return np.ascontiguousarray(crop[:, ::-1]), mirror_euler(angles)


def blur(crop: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur, kernel size from sigma (OpenCV's rule)."""
    return cv2.GaussianBlur(crop, (0, 0), sigmaX=float(sigma))


def down_up_sample(crop: np.ndarray, scale: float) -> np.ndarray:
    """Shrink by ``scale`` (0 < scale <= 1) and enlarge back to the original size."""
    h, w = crop.shape[:2]
    small = cv2.resize(
        crop, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def augment_crop(
    crop: np.ndarray, angles: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the random augmentations to one crop.

    Args:
        crop: ``(h, w, 3)`` uint8 BGR face crop.
        angles: ``(3,)`` degrees (yaw, pitch, roll).
        rng: generator; the same draws are consumed whatever the probabilities
            so a sample's randomness does not shift when one op is disabled.
        config: probabilities and ranges.

    Returns:
        ``(crop, angles)``; the crop keeps its size and dtype.
    """
    draws = rng.random(3)
    sigma = rng.uniform(*config.blur_sigma)
    scale = rng.uniform(*config.resample_scale)
    angles = np.asarray(angles, dtype=np.float64)
    if draws[0] < config.flip_prob:
        crop, angles = flip(crop, angles)
    if draws[1] < config.resample_prob:
        crop = down_up_sample(crop, scale)
    if draws[2] < config.blur_prob:
        crop = blur(crop, sigma)
    return crop, angles
