"""Small datasets written in the real file formats, for the training tests.

Images are simple drawings whose content depends on the pose (a face-like
ellipse whose features shift with yaw/pitch and turn with roll), so that a
tiny network can learn something in a few steps; annotations are written
with the real writers (``scipy.io.savemat``, ``numpy.savez``, text files).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import scipy.io

from lechpe_model.conventions import euler_to_pose_para


def draw_face(
    size: int, yaw: float, pitch: float, roll: float, rng
) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 image with a pose-dependent face drawing, and (68, 2) pseudo-landmarks."""
    img = np.full((size, size, 3), rng.integers(40, 200, 3), np.uint8)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    c = size / 2
    r = size * 0.28
    cv2.ellipse(img, (int(c), int(c)), (int(r * 0.8), int(r)), roll, 0, 360, (150, 180, 220), -1)
    dx = -yaw / 90 * r * 0.6
    dy = -pitch / 90 * r * 0.6
    rot = np.radians(roll)
    for ox, oy, col in (
        (-0.35, -0.2, (30, 30, 30)),
        (0.35, -0.2, (30, 30, 30)),
        (0, 0.15, (60, 60, 160)),
    ):
        px, py = ox * r + dx, oy * r + dy
        qx = c + px * np.cos(rot) - py * np.sin(rot)
        qy = c + px * np.sin(rot) + py * np.cos(rot)
        cv2.circle(img, (int(qx), int(qy)), max(2, int(r * 0.12)), col, -1)
    theta = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([c + 0.8 * r * np.cos(theta), c + r * np.sin(theta)], axis=1)
    return img, pts.astype(np.float64)


def random_angles(rng, count: int, limit: float = 60.0) -> np.ndarray:
    return rng.uniform(-limit, limit, (count, 3))


def write_300wlp(folder: str, count: int, seed: int = 0, size: int = 96, angles=None) -> np.ndarray:
    """``count`` .jpg + .mat pairs (Pose_Para 1x7 radians, pt2d 2x68); returns (N, 3) degrees."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    angles = random_angles(rng, count) if angles is None else np.asarray(angles, float)
    for i, (yaw, pitch, roll) in enumerate(angles):
        img, pts = draw_face(size, yaw, pitch, roll, rng)
        name = os.path.join(folder, f"img_{i:04d}")
        cv2.imwrite(name + ".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        pose_para = euler_to_pose_para(yaw, pitch, roll, (0.0, 0.0, 0.0), 1.0).reshape(1, 7)
        scipy.io.savemat(name + ".mat", {"Pose_Para": pose_para, "pt2d": pts.T})
    return angles
