"""OpenCV's frontal-face Haar cascade."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lechpe_model.detection.base import (
    DEFAULT_SCORE_THRESHOLD,
    HAAR_MAX_INPUT_SIDE,
    DetectorUnavailable,
    FaceDetection,
    FaceDetector,
)


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade: a universal fallback (no landmarks).

    The score is ``sigmoid(level weight)`` of the cascade's last stage
    (``detectMultiScale3``), so 0.5 means a weight of 0; the cascade's own
    ``min_neighbors`` vote does most of the filtering.
    """

    name = "haar"
    default_max_input_side = HAAR_MAX_INPUT_SIDE
    crop_margin = 0.22
    crop_shift_y = 0.18

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        cascade_path: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(score_threshold, **kwargs)
        if not hasattr(cv2, "CascadeClassifier"):
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5); "
                "install opencv-python-headless<5"
            )
        if cascade_path is None:
            data = getattr(cv2, "data", None)
            if data is None:
                raise DetectorUnavailable("this OpenCV build ships no Haar cascades (cv2.data)")
            cascade_path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise DetectorUnavailable(f"cannot load the Haar cascade {cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(
            np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1), strict=True
        ):
            score = float(1.0 / (1.0 + np.exp(-float(weight))))
            if score >= self.score_threshold:
                box = np.array([x, y, x + w, y + h], dtype=np.float32)
                faces.append(FaceDetection(box=box, score=score, landmarks=None))
        return faces
