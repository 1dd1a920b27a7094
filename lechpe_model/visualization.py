"""Drawing head poses on frames (OpenCV).

Axes colours (BGR images): **red** = the head's forward axis (out through the
nose), **green** = the head's left (the person's left), **blue** = up through
the top of the head. The axes are the columns of
``conventions.euler_to_optical_matrix`` projected orthographically onto the
image (optical x right, y down). For a face looking straight into the camera
the red axis points at the viewer (a dot), green points to the image's right
(the person's left) and blue points up. Positive yaw swings red toward the
image's left, positive pitch swings it up, positive roll tilts blue clockwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lechpe_model.conventions import euler_to_optical_matrix

#: BGR colours of the forward, left and up axes.
AXIS_COLORS = ((0, 0, 255), (0, 200, 0), (255, 0, 0))


def axis_endpoints(angles: Sequence[float], center: Sequence[float], size: float) -> np.ndarray:
    """Image points of the three head axes' tips.

    Args:
        angles: (yaw, pitch, roll) degrees.
        center: (x, y) pixel where the axes start.
        size: axis length in pixels.

    Returns:
        ``(3, 3)`` array: rows forward, left, up; columns image x, image y and
        depth (optical z, positive = away from the camera).
    """
    yaw, pitch, roll = (float(a) for a in angles)
    axes = euler_to_optical_matrix(yaw, pitch, roll)  # columns: forward, left, up
    tips = np.empty((3, 3))
    for i in range(3):
        tips[i, 0] = center[0] + size * axes[0, i]
        tips[i, 1] = center[1] + size * axes[1, i]
        tips[i, 2] = axes[2, i]
    return tips


def draw_pose_axes(
    image: np.ndarray,
    angles: Sequence[float],
    center: Sequence[float],
    size: float,
    thickness: int = 2,
) -> np.ndarray:
    """Draw the three head axes in place (and return the image).

    Axes pointing away from the camera are drawn first so nearer ones stay visible.
    Non-finite angles draw nothing.
    """
    if not np.all(np.isfinite(np.asarray(angles, dtype=np.float64))):
        return image
    tips = axis_endpoints(angles, center, size)
    start = (int(round(center[0])), int(round(center[1])))
    for i in np.argsort(-tips[:, 2]):  # farthest first
        end = (int(round(tips[i, 0])), int(round(tips[i, 1])))
        cv2.arrowedLine(image, start, end, AXIS_COLORS[i], thickness, cv2.LINE_AA, tipLength=0.15)
    return image


def draw_face_box(image: np.ndarray, face, color=(0, 255, 255), label: bool = True) -> np.ndarray:
    """Draw a ``pipeline.FacePose`` box (and a yaw/pitch/roll label) in place."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
    cv2.rectangle(image, (x1, y1), (x2, y2), color, 1, cv2.LINE_AA)
    if label:
        text = f"y{face.angles[0]:+.0f} p{face.angles[1]:+.0f} r{face.angles[2]:+.0f}"
        cv2.putText(
            image, text, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA
        )
    return image


def annotate(image: np.ndarray, faces) -> np.ndarray:
    """Copy of ``image`` with every face's box, label and axes drawn."""
    out = image.copy()
    for face in faces:
        draw_face_box(out, face)
        x1, y1, x2, y2 = (float(v) for v in face.box)
        center = ((x1 + x2) / 2, (y1 + y2) / 2)
        draw_pose_axes(out, face.angles, center, 0.6 * max(x2 - x1, y2 - y1))
    return out
