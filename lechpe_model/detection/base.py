"""Shared parts of every face detector: the box type, the interface, constants."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

LOG = logging.getLogger("lechpe_model.detection")

#: Default minimum detection score in [0, 1].
DEFAULT_SCORE_THRESHOLD = 0.5
#: Frames larger than this (longest side, px) are downscaled for detection;
#: boxes are mapped back to full resolution. Detection cost grows with the
#: pixel count: YuNet (yuface, one thread) takes ~8 ms on a 640x480 frame scaled
#: to 320x240 and ~36 ms at full size on this project's CI CPU, while still
#: finding faces down to ~16 px wide in the full frame (test grid of 130 faces).
#: Raise it for far-away faces in large frames. The Haar cascade needs more
#: pixels (its smallest window is 24 px) and uses HAAR_MAX_INPUT_SIDE.
DEFAULT_MAX_INPUT_SIDE = 320
HAAR_MAX_INPUT_SIDE = 640


class DetectorUnavailable(RuntimeError):
    """The requested detector cannot run here (missing package, model file ...)."""


@dataclass
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(4,)`` float32 ``(x1, y1, x2, y2)`` pixels in the input frame.
        score: detector confidence in [0, 1].
        landmarks: ``(5, 2)`` float32 pixel (x, y) of the right eye, left eye,
            nose tip, right and left mouth corner (as libfacedetection / YuNet
            order them), or ``None`` (Haar).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def keep_largest(detections: list[FaceDetection], max_faces: int | None) -> list[FaceDetection]:
    """The ``max_faces`` detections with the largest boxes, largest first.

    ``max_faces=None`` keeps all (still sorted by area, largest first).
    """
    ordered = sorted(detections, key=lambda d: d.area, reverse=True)
    return ordered if max_faces is None else ordered[: max(int(max_faces), 0)]


class FaceDetector:
    """Interface: ``detect(image_bgr) -> list[FaceDetection]``.

    Subclasses implement :meth:`_detect` on an image that is already at most
    ``max_input_side`` pixels on its longest side; :meth:`detect` does the
    scaling and the input checks.
    """

    name = "base"
    #: longest side frames are scaled to when ``max_input_side`` is None
    default_max_input_side = DEFAULT_MAX_INPUT_SIDE
    #: margin and vertical centre shift turning this detector's box into the
    #: training-equivalent crop (see the module docstring).
    crop_margin = 0.25
    crop_shift_y = 0.0
    #: ``(|turn| deg, box side turned / upright)`` rows: how this detector's box shrinks
    #: on a face turned in the image plane (``training.tilt_eval --box-scale``);
    #: ``None``: not measured, taken as 1.
    turned_box_scale_table: tuple[tuple[float, float], ...] | None = None

    def turned_box_scale(self, roll_deg: float) -> float:
        """Box side on a face turned by ``roll_deg`` over its side upright (interpolated;
        the last row's value beyond it). The runtime's upright re-crop divides by it."""
        table = self.turned_box_scale_table
        if not table:
            return 1.0
        angles, scales = zip(*table, strict=True)
        return float(np.interp(abs(float(roll_deg)), angles, scales))

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_input_side: int | None = None,
        **ignored,
    ) -> None:
        if ignored:  # options meant for another detector (create_detector("auto", ...))
            LOG.debug("%s ignores options %s", self.name, sorted(ignored))
        self.score_threshold = float(score_threshold)
        #: frames are downscaled to this longest side for detection (0: never)
        self.max_input_side = int(
            self.default_max_input_side if max_input_side is None else max_input_side
        )

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Faces in a frame.

        Args:
            image: ``(H, W, 3)`` uint8 BGR.

        Returns:
            Detections with boxes in ``image`` pixel coordinates (unsorted).

        Raises:
            ValueError: if ``image`` is not a non-empty uint8 (H, W, 3) array.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            raise ValueError(
                f"{self.name}: expected a uint8 (H, W, 3) BGR image, got "
                f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
            )
        height, width = image.shape[:2]
        if min(height, width) < 2:
            return []
        scale = 1.0
        if self.max_input_side and max(height, width) > self.max_input_side:
            scale = self.max_input_side / max(height, width)
            size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces = self._detect(np.ascontiguousarray(image))
        if scale != 1.0:
            for face in faces:
                face.box = (face.box / scale).astype(np.float32)
                if face.landmarks is not None:
                    face.landmarks = (face.landmarks / scale).astype(np.float32)
        return faces

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score_threshold={self.score_threshold})"
