"""Frame validation and normalisation to 8-bit BGR (what detectors and crops expect).

Accepted inputs and what happens to them (anything else is refused with an
:class:`InvalidImage` naming the problem):

==========================  ===================================================
input                       result
==========================  ===================================================
(H, W, 3) uint8             used as is (BGR)
(H, W) or (H, W, 1)         grayscale -> BGR (three equal channels)
(H, W, 4)                   BGRA -> BGR (alpha dropped)
uint16                      scaled to uint8 (x * 255 / 65535, rounded)
bool                        False -> 0, True -> 255
float32/float64 in [0, 1]   scaled to uint8 (x * 255, rounded); values outside
                            [0, 1] are refused (ambiguous scale: convert to
                            uint8 yourself), NaN/inf are refused
empty, smaller than         refused: no face can be found
``min_side`` px
larger than ``max_side``    refused before any work (default 8192 px a side)
==========================  ===================================================
"""

from __future__ import annotations

import cv2
import numpy as np

#: Default largest accepted side in pixels.
DEFAULT_MAX_SIDE = 8192
#: Smallest accepted side in pixels (the detectors find no face below ~10 px).
DEFAULT_MIN_SIDE = 8


class InvalidImage(ValueError):
    """A frame that cannot be processed; the message says why."""


def describe(image) -> str:
    """Short description of an array-like for error messages."""
    if isinstance(image, np.ndarray):
        return f"{image.dtype} array of shape {image.shape}"
    return type(image).__name__


def to_bgr8(
    image: np.ndarray,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Validate a frame and convert it to a contiguous ``(H, W, 3)`` uint8 BGR array.

    Raises:
        InvalidImage: naming the problem (see the module table).
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"expected a NumPy image array, got {describe(image)}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise InvalidImage(f"empty or malformed image: {describe(image)} (expected (H, W[, C]))")
    height, width = image.shape[:2]
    if max(height, width) > max_side:
        raise InvalidImage(
            f"image of {width}x{height} px exceeds the limit of {max_side} px a side "
            f"(raise max_side or downscale the frames)"
        )
    if min(height, width) < min_side:
        raise InvalidImage(
            f"image of {width}x{height} px is too small (at least {min_side} px a side needed)"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise InvalidImage(f"unsupported number of channels {channels} ({describe(image)})")
    image = _to_uint8(image)
    if channels == 1:
        return cv2.cvtColor(image.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype in (np.float16, np.float32, np.float64):
        if not np.all(np.isfinite(image)):
            raise InvalidImage(f"image contains NaN or infinite values ({describe(image)})")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise InvalidImage(
                f"float image values span [{low:g}, {high:g}]; float images must lie in "
                f"[0, 1] (convert other scales to uint8 first)"
            )
        return np.round(image.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    raise InvalidImage(
        f"unsupported pixel type {image.dtype} (use uint8, uint16, bool or float in [0, 1])"
    )
