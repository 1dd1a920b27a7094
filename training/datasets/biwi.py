"""BIWI Kinect Head Pose: the preprocessed ``.npz`` layout and the raw per-frame layout.

Preprocessed ``.npz`` (the widely used FSA-Net-style file, e.g. ``BIWI_noTrack.npz``)
--------------------------------------------------------------------------------
* ``image``: ``(N, H, W, 3)`` uint8 face crops (64 x 64 in the common file);
  stored in the channel order OpenCV decoded them (**BGR**, the default
  ``channel_order="bgr"``; pass ``"rgb"`` for files written in RGB);
* ``pose``: ``(N, 3)`` degrees in the order **(yaw, pitch, roll)**, already in
  the 300W-LP label convention.

The images are already face crops: the whole image is the face box and no
extra margin is added (see ``training.torch_data``).

Split groups: an optional ``subject`` (or ``identity``) array ``(N,)`` in the
file gives each row's subject (group ``subject<value>``).  The common file has
none: every row is then its own group and a warning says that the split is
*not* by subject (consecutive video frames are near-duplicates).

Raw layout (the database as distributed: ``hpdb/<subject>/``)
------------------------------------------------------------
* ``frame_XXXXX_rgb.png``: 640 x 480 colour frame;
* ``frame_XXXXX_pose.txt``: three lines with the 3 x 3 head rotation matrix
  ``R`` (row by row), an empty line, then the head centre ``t`` in mm
  (depth-camera frame);
* optional ``frame_XXXXX_bbox.txt``: ``x1 y1 x2 y2`` face box in pixels of the
  RGB frame (e.g. from a detector run offline);
* otherwise ``rgb.cal`` in the subject folder (RGB intrinsics 3 x 3, 4
  distortion values, depth->RGB rotation 3 x 3 and translation 3, image size)
  is used to project ``t`` into the RGB frame and a square box of
  ``HEAD_SIZE_MM`` side around it becomes the face box.

Split groups: the subject folder (the first folder under the root), so no
subject is in both training and validation.

Pose conversion (the assumption, tested in ``test/test_datasets.py``)
-------------------------------------------------------------------
The conversion used by peer code (Hopenet/FSA-Net) reads
``M = R^T`` and takes ``yaw = -asin(-M[2,0])``, ``pitch = atan2(M[2,1], M[2,2])``,
``roll = -atan2(M[1,0], M[0,0])`` - i.e. it decomposes
``M = Rz(-roll) Ry(-yaw) Rx(pitch)``.  Conjugating with the mirror
``F = diag(-1, 1, 1)`` flips the sign of the z and y rotations and keeps x, so
``R^T = F (Rz(roll) Ry(yaw) Rx(pitch)) F``, i.e. ``F R F`` is exactly our label
matrix ``(Rz(roll) Ry(yaw) Rx(pitch))^T`` (``lechpe_model.conventions``).  BIWI's
camera x axis points the other way from the 3DDFA model frame's.  We therefore
convert with ``matrix_to_euler(mirror_matrix(R))``, which reproduces the peer
labels (and hence the numbers in the paper's Table I) to numerical precision.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from lechpe_model.conventions import matrix_to_euler, mirror_matrix
from training.datasets.base import (
    ANGLE_LIMIT,
    PoseDataset,
    PoseSample,
    SkipReport,
    filter_angle_range,
    relative_key,
)

LOG = logging.getLogger("training.datasets")

#: Side of the square face box (mm) around the head centre for raw BIWI frames.
HEAD_SIZE_MM = 220.0


def biwi_matrix_to_euler(rotation: np.ndarray) -> np.ndarray:
    """BIWI ``*_pose.txt`` rotation matrix -> (yaw, pitch, roll) degrees, our convention."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3) or not np.all(np.isfinite(rotation)):
        raise ValueError(
            f"malformed annotation: rotation must be a finite 3x3, got {rotation.shape}"
        )
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3):
        raise ValueError("malformed annotation: the 3x3 matrix is not a rotation")
    return matrix_to_euler(mirror_matrix(rotation))


def load_biwi_npz(
    path: str,
    angle_limit: float = ANGLE_LIMIT,
    channel_order: str = "bgr",
    occluded: bool = False,
) -> PoseDataset:
    """Load the preprocessed BIWI ``.npz`` (keys ``image`` and ``pose``)."""
    report = SkipReport(os.path.basename(path))
    samples: list[PoseSample] = []
    try:
        with np.load(path) as data:
            if "image" not in data or "pose" not in data:
                raise ValueError(f"expected arrays 'image' and 'pose', found {sorted(data.files)}")
            images_shape = data["image"].shape
            poses = np.asarray(data["pose"], dtype=np.float64)
            subject_key = next((k for k in ("subject", "identity") if k in data), None)
            subjects = np.asarray(data[subject_key]).reshape(-1) if subject_key else None
    except (OSError, ValueError) as exc:
        report.skip(path, f"unreadable dataset file: {exc}")
        return PoseDataset([], report, root=path, format="biwi_npz")
    if len(images_shape) not in (3, 4) or poses.ndim != 2 or poses.shape[1] < 3:
        report.skip(path, f"malformed dataset: image {images_shape}, pose {poses.shape}")
        return PoseDataset([], report, root=path, format="biwi_npz")
    if poses.shape[0] != images_shape[0]:
        report.skip(path, f"malformed dataset: {images_shape[0]} images but {len(poses)} poses")
    name = os.path.basename(path)
    if subjects is not None and len(subjects) != len(poses):
        report.skip(path, f"malformed dataset: {len(subjects)} subjects but {len(poses)} poses")
        subjects = None
    if subjects is None:
        LOG.warning(
            "%s: no 'subject' array: each row is its own split group (NOT a split by subject)",
            name,
        )
    for i in range(min(len(poses), images_shape[0])):
        key = f"{name}#{i}"
        if not np.all(np.isfinite(poses[i, :3])):
            report.skip(key, "malformed annotation: non-finite pose")
            continue
        samples.append(
            PoseSample(
                key=key,
                angles=poses[i, :3].copy(),
                image_path=path,
                array_index=i,
                occluded=occluded,
                channel_order=channel_order,
                group=f"subject{subjects[i]}" if subjects is not None else "",
            )
        )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=path, format="biwi_npz")


def read_pose_txt(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw BIWI pose file -> ((3, 3) rotation, (3,) head centre mm)."""
    with open(path, encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip()]
    try:
        values = [[float(v) for v in row] for row in rows]
    except ValueError as exc:
        raise ValueError(f"malformed annotation: {exc}") from exc
    if len(values) < 4 or any(len(r) != 3 for r in values[:4]):
        raise ValueError(
            "malformed annotation: expected 3 rows of a rotation matrix and 1 row of translation"
        )
    return np.array(values[:3]), np.array(values[3])


def read_calibration(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BIWI ``rgb.cal`` -> (intrinsics (3, 3), rotation (3, 3), translation (3,))."""
    with open(path, encoding="utf-8") as handle:
        numbers = [float(v) for v in handle.read().split()]
    if len(numbers) < 9 + 4 + 9 + 3:
        raise ValueError(f"malformed calibration: {len(numbers)} numbers")
    intrinsics = np.array(numbers[0:9]).reshape(3, 3)
    rotation = np.array(numbers[13:22]).reshape(3, 3)
    translation = np.array(numbers[22:25])
    return intrinsics, rotation, translation


def project_head_box(center_mm: np.ndarray, calibration) -> np.ndarray:
    """Square face box around the projection of the head centre (``HEAD_SIZE_MM`` side)."""
    intrinsics, rotation, translation = calibration
    point = rotation @ np.asarray(center_mm, dtype=np.float64) + translation
    if point[2] <= 0:
        raise ValueError("malformed annotation: head centre behind the camera")
    u = intrinsics[0, 0] * point[0] / point[2] + intrinsics[0, 2]
    v = intrinsics[1, 1] * point[1] / point[2] + intrinsics[1, 2]
    half = 0.5 * intrinsics[0, 0] * HEAD_SIZE_MM / point[2]
    return np.array([u - half, v - half, u + half, v + half], dtype=np.float32)


def load_biwi_raw(
    root: str, angle_limit: float = ANGLE_LIMIT, occluded: bool = False
) -> PoseDataset:
    """Load the raw BIWI layout (``<root>/<subject>/frame_XXXXX_rgb.png`` + ``_pose.txt``)."""
    report = SkipReport(os.path.basename(os.path.normpath(root)) or root)
    samples: list[PoseSample] = []
    calibrations: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith("_rgb.png"):
                continue
            image_path = os.path.join(dirpath, name)
            stem = image_path[: -len("_rgb.png")]
            pose_path = stem + "_pose.txt"
            if not os.path.isfile(pose_path):
                report.skip(image_path, "missing annotation: no _pose.txt next to the frame")
                continue
            try:
                rotation, center = read_pose_txt(pose_path)
                angles = biwi_matrix_to_euler(rotation)
                box = _raw_box(stem, dirpath, center, calibrations)
            except (OSError, ValueError) as exc:
                report.skip(pose_path, str(exc))
                continue
            key = relative_key(image_path, root)
            samples.append(
                PoseSample(
                    key=key,
                    angles=angles,
                    image_path=image_path,
                    box=box,
                    occluded=occluded,
                    group="subject:" + _subject_of(key, root),
                )
            )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=root, format="biwi_raw")


def _subject_of(key: str, root: str) -> str:
    """First folder of the key (the subject); the root's name when frames lie directly in it."""
    parts = key.split("/")
    return parts[0] if len(parts) > 1 else os.path.basename(os.path.normpath(root))


def _raw_box(stem: str, folder: str, center, calibrations: dict) -> np.ndarray | None:
    bbox_path = stem + "_bbox.txt"
    if os.path.isfile(bbox_path):
        with open(bbox_path, encoding="utf-8") as handle:
            values = [float(v) for v in handle.read().split()]
        if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
            raise ValueError(f"malformed annotation: bad box in {bbox_path}: {values}")
        return np.array(values, dtype=np.float32)
    if folder not in calibrations:
        cal_path = os.path.join(folder, "rgb.cal")
        calibrations[folder] = read_calibration(cal_path) if os.path.isfile(cal_path) else None
    if calibrations[folder] is None:
        raise ValueError("missing annotation: no _bbox.txt and no rgb.cal to locate the face")
    return project_head_box(center, calibrations[folder])
