"""Union of several detectors: a face any of them finds is kept (more recall).

Boxes of different detectors have different extents, so they are compared in
the pose network's crop convention: each detection becomes its detector's crop
(``expand_box(box, crop_margin, shift_y=crop_shift_y)``), overlapping crops
(IoU > ``nms_threshold``) are merged keeping the earlier member's face (the
first member's faces, then the faces only later members find), and each kept
crop is turned back into a box of the *first* detector's extent, so the
combination carries the first detector's ``crop_margin`` / ``crop_shift_y``
and the pipeline crops every face the same way.

Scores of different detectors are not calibrated against each other; each
member keeps its own threshold.
"""

from __future__ import annotations

import numpy as np

from lechpe_model.detection.base import FaceDetection, FaceDetector
from lechpe_model.preprocessing import box_iou, expand_box


def box_from_crop(crop: np.ndarray, margin: float, shift_y: float) -> np.ndarray:
    """Inverse of ``expand_box(box, margin, shift_y=shift_y)`` for a square box."""
    x1, y1, x2, y2 = (float(v) for v in crop)
    side = (x2 - x1) / (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0 - shift_y * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


class CombinedDetector(FaceDetector):
    """Runs every member detector and merges their faces (see the module docstring).

    Args:
        members: detectors, the first one sets the box extent and landmarks' priority.
        nms_threshold: crop IoU above which two faces are one.
    """

    default_max_input_side = 0  # members scale frames themselves

    def __init__(self, members: list[FaceDetector], nms_threshold: float = 0.4) -> None:
        if not members:
            raise ValueError("a combined detector needs at least one member")
        super().__init__(min(m.score_threshold for m in members), max_input_side=0)
        self.members = list(members)
        self.name = "+".join(m.name for m in members)
        self.crop_margin = members[0].crop_margin
        self.crop_shift_y = members[0].crop_shift_y
        self.nms_threshold = float(nms_threshold)

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        candidates = []  # (score, member order, crop, detection)
        for order, member in enumerate(self.members):
            for det in member.detect(image):
                crop = expand_box(det.box, member.crop_margin, shift_y=member.crop_shift_y)
                candidates.append((det.score, -order, crop, det, member))
        # the first member's faces first (its boxes are the calibrated extent), then
        # the faces of the next members that none before them has; by score within one
        candidates.sort(key=lambda c: (c[1], c[0]), reverse=True)
        kept: list[tuple] = []
        for cand in candidates:
            if all(box_iou(cand[2], k[2]) <= self.nms_threshold for k in kept):
                kept.append(cand)
        faces = []
        for score, _, crop, det, member in kept:
            box = (
                det.box
                if member is self.members[0]
                else box_from_crop(crop, self.crop_margin, self.crop_shift_y)
            )
            faces.append(
                FaceDetection(box=np.asarray(box, np.float32), score=score, landmarks=det.landmarks)
            )
        return faces

    def __repr__(self) -> str:
        return f"CombinedDetector({self.members!r})"
