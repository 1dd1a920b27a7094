"""300W-LP and AFLW2000 in their distributed layout (also what ``lechpe-synth`` writes).

Layout: any folder tree holding ``NAME.jpg`` next to ``NAME.mat``.  The MATLAB
file must contain

* ``Pose_Para``: ``(1, 7)`` ``[pitch, yaw, roll, tx, ty, tz, scale]``, angles
  in **radians** (3DDFA fitting) -> converted by
  ``lechpe_model.conventions.pose_para_to_euler``;
* ``pt2d``: ``(2, 68)`` (x row, y row) image landmarks in pixels (``(68, 2)``
  is accepted too).  The face box is their tight bounding box; the crop adds a
  margin to it (random in ``TRAIN_MARGIN_RANGE`` for training, ``TEST_MARGIN``
  at test time, see ``lechpe_model.preprocessing``).

Items with a missing ``.mat``, a malformed annotation or ``|angle| > 99`` are
skipped and counted.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io

from lechpe_model.conventions import pose_para_to_euler
from lechpe_model.preprocessing import box_from_landmarks
from training.datasets.base import (
    ANGLE_LIMIT,
    PoseDataset,
    PoseSample,
    SkipReport,
    filter_angle_range,
    find_images,
    relative_key,
)


def read_mat_annotation(mat_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``.mat``: returns ((3,) yaw/pitch/roll degrees, (68, 2) landmarks).

    Raises:
        ValueError / OSError: naming what is wrong.
    """
    try:
        mat = scipy.io.loadmat(mat_path)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"unreadable .mat file ({type(exc).__name__}: {exc})") from exc
    if "Pose_Para" not in mat:
        raise ValueError("malformed annotation: no 'Pose_Para' variable")
    pose = np.asarray(mat["Pose_Para"], dtype=np.float64).reshape(-1)
    if pose.size < 3 or not np.all(np.isfinite(pose[:3])):
        raise ValueError(f"malformed annotation: Pose_Para has {pose.size} values or NaN")
    angles = pose_para_to_euler(pose)
    if "pt2d" not in mat:
        raise ValueError("malformed annotation: no 'pt2d' landmarks")
    pts = np.asarray(mat["pt2d"], dtype=np.float64)
    if pts.ndim != 2 or 2 not in pts.shape:
        raise ValueError(f"malformed annotation: pt2d has shape {pts.shape}, expected (2, N)")
    points = pts.T if pts.shape[0] == 2 else pts
    return angles, points[:, :2].astype(np.float32)


def load_300wlp(
    root: str, angle_limit: float = ANGLE_LIMIT, occluded: bool = False, name: str | None = None
) -> PoseDataset:
    """Load a 300W-LP / AFLW2000-layout folder (recursively).

    Args:
        root: dataset folder.
        angle_limit: samples with any |angle| above it (degrees) are excluded.
        occluded: mark the samples as occluded (a synthetic occluded replica).
    """
    report = SkipReport(name or os.path.basename(os.path.normpath(root)) or root)
    samples: list[PoseSample] = []
    for image_path in find_images(root, (".jpg", ".jpeg", ".png")):
        mat_path = os.path.splitext(image_path)[0] + ".mat"
        if not os.path.isfile(mat_path):
            report.skip(image_path, "missing annotation: no .mat file next to the image")
            continue
        try:
            angles, points = read_mat_annotation(mat_path)
            # AFLW2000 marks some invisible points with negative coordinates.
            visible = points[np.all(points >= 0, axis=1)]
            box = box_from_landmarks(visible if len(visible) >= 2 else points)
        except (ValueError, OSError) as exc:
            report.skip(mat_path, str(exc) if ":" in str(exc) else f"malformed annotation: {exc}")
            continue
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            report.skip(mat_path, f"malformed annotation: degenerate landmark box {box.tolist()}")
            continue
        samples.append(
            PoseSample(
                key=relative_key(image_path, root),
                angles=angles,
                image_path=image_path,
                box=box,
                landmarks=points,
                occluded=occluded,
            )
        )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=root, format="300wlp")
