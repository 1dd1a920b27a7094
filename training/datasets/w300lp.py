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

Split groups (:attr:`PoseSample.group`, what the train/validation split keeps
together, see :func:`source_group`):

* an ``identity`` variable in the ``.mat`` (``lechpe-synth`` with identities,
  an integer of shape (1, 1)) -> ``"id<identity>"``: every view of a person
  lands on one side of the split;
* 300W-LP file names ``<SET>_<photo>_<view>`` (SET in AFW, HELEN, IBUG, LFPW),
  in the plain and the ``_Flip`` folders -> ``<SET>_<photo>``: the rendered
  views of one source photo and their mirror copies stay together;
* anything else (AFLW2000, synthetic sets written before identities existed,
  which all show the same face) -> the file itself: one group per image.
"""

from __future__ import annotations

import os
import re

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

#: 300W-LP image stems: <SET>_<source photo>_<view index> (``_Flip`` copies alike).
_W300LP_STEM = re.compile(r"^((?:AFW|HELEN|IBUG|LFPW)_.+)_\d+$")


def source_group(key: str, identity: int | None = None) -> str:
    """Split group of a 300W-LP-layout sample (see the module docstring).

    ``AFW/AFW_134212_1_3.jpg`` and ``AFW_Flip/AFW_134212_1_3.jpg`` (or a stem
    with ``_Flip`` in it) -> ``AFW_134212_1``; with ``identity`` -> ``id<identity>``.
    """
    if identity is not None:
        return f"id{int(identity)}"
    stem = os.path.splitext(os.path.basename(key))[0].replace("_Flip", "")
    match = _W300LP_STEM.match(stem)
    return match.group(1) if match else key


def read_mat_annotation(mat_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``.mat``: returns ((3,) yaw/pitch/roll degrees, (68, 2) landmarks).

    Raises:
        ValueError / OSError: naming what is wrong.
    """
    angles, points, _ = read_mat_sample(mat_path)
    return angles, points


def read_mat_sample(mat_path: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """:func:`read_mat_annotation` plus the optional integer ``identity`` (None if absent)."""
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
    identity = None
    if "identity" in mat:
        ident = np.asarray(mat["identity"]).reshape(-1)
        if ident.size != 1 or not np.isfinite(ident[0]) or float(ident[0]) != int(ident[0]):
            raise ValueError(f"malformed annotation: identity must be one integer, got {ident}")
        identity = int(ident[0])
    return angles, points[:, :2].astype(np.float32), identity


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
            angles, points, identity = read_mat_sample(mat_path)
            # AFLW2000 marks some invisible points with negative coordinates.
            visible = points[np.all(points >= 0, axis=1)]
            box = box_from_landmarks(visible if len(visible) >= 2 else points)
        except (ValueError, OSError) as exc:
            report.skip(mat_path, str(exc) if ":" in str(exc) else f"malformed annotation: {exc}")
            continue
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            report.skip(mat_path, f"malformed annotation: degenerate landmark box {box.tolist()}")
            continue
        key = relative_key(image_path, root)
        samples.append(
            PoseSample(
                key=key,
                angles=angles,
                image_path=image_path,
                box=box,
                landmarks=points,
                occluded=occluded,
                group=source_group(key, identity),
            )
        )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=root, format="300wlp")
