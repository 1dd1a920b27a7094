"""Image degradations of a robot's camera: defocus, motion blur, low resolution, grey /
near-infrared look, sensor noise, clutter. Pure functions of the image and a generator.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def defocus(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Out-of-focus blur (Gaussian of ``sigma_px``)."""
    if sigma_px <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), float(sigma_px))


def motion_blur(image: np.ndarray, length_px: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur: the mean along a ``length_px`` segment at ``angle_deg``."""
    length = max(1, int(round(length_px)))
    if length < 2:
        return image
    size = length + 2 if length % 2 == 0 else length + 1
    size += 1 - size % 2  # odd kernel, centred
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    dx = math.cos(math.radians(angle_deg)) * (length - 1) / 2.0
    dy = math.sin(math.radians(angle_deg)) * (length - 1) / 2.0
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def low_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by ``factor`` (area) and enlarge back (bilinear): a far or cheap camera."""
    if factor <= 1:
        return image
    h, w = image.shape[:2]
    small = cv2.resize(
        image,
        (max(4, int(round(w / factor))), max(4, int(round(h / factor)))),
        interpolation=cv2.INTER_AREA,
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Monochrome camera: BT.601 luma in all three channels (R = G = B)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[..., None], 3, axis=2)


def to_infrared(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near-infrared look: red-weighted luma (skin is bright in NIR), lifted gamma,
    the vignetting of an IR illuminator; R = G = B."""
    f = image.astype(np.float32) / 255.0
    luma = 0.75 * f[..., 0] + 0.2 * f[..., 1] + 0.05 * f[..., 2]
    luma = luma ** rng.uniform(0.6, 0.85)
    h, w = luma.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    luma = luma * (1.0 - rng.uniform(0.1, 0.35) * np.clip(r2 / 2, 0, 1))
    grey = np.clip(luma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def sensor_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian read noise of ``std`` plus shot noise growing with brightness."""
    if std <= 0:
        return image
    f = image.astype(np.float32)
    sigma = std * np.sqrt(0.5 + f / 255.0)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    if (
        image.ndim == 3
        and np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 1], image[..., 2])
    ):
        noise[..., 1] = noise[..., 0]  # a grey camera stays grey
        noise[..., 2] = noise[..., 0]
    return np.clip(f + noise, 0, 255).astype(np.uint8)


def add_clutter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw 2-8 random shapes (boxes, discs, bars, lines) over a background."""
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        kind = int(rng.integers(4))
        x, y = int(rng.integers(w)), int(rng.integers(h))
        size = int(rng.uniform(0.05, 0.4) * max(w, h))
        if kind == 0:
            cv2.rectangle(out, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1)
        elif kind == 1:
            cv2.circle(out, (x, y), max(2, size // 2), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            angle = rng.uniform(0, math.pi)
            dx, dy = int(size * math.cos(angle)), int(size * math.sin(angle))
            thick = max(1, int(rng.uniform(0.01, 0.06) * w))
            cv2.line(out, (x - dx, y - dy), (x + dx, y + dy), colour, thick, cv2.LINE_AA)
        else:  # a shelf-like bar across the image
            y0 = int(rng.integers(h))
            cv2.rectangle(out, (0, y0), (w, y0 + max(2, size // 6)), colour, -1)
    return cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
