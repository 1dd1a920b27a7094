"""Estimated faces -> standard ROS 2 messages.

* ``geometry_msgs/PoseStamped`` (``head_pose``): the largest face.
* ``geometry_msgs/PoseArray`` (``head_poses``): every face, in the pipeline's
  order: by track id, so a face keeps its slot relative to the others across frames.
* ``sensor_msgs/PointCloud2`` (``head_pose_faces``): one point per face, in
  the same order as ``head_poses``, with the named float32 fields of
  :data:`FACE_FIELDS` (position, Euler angles in degrees, their uncertainty,
  confidence, detector score, cluster, box, track id, tracked flag). It is the standard message that
  has a header and self-describing named fields, and RViz shows it as the
  faces' positions coloured by any field.

Orientation: the head frame (REP-103 body axes: x out through the nose, y to
the person's left, z up) expressed in the camera optical frame (x right, y
down, z forward): the network's ray-relative angles turned along the face's
pixel ray (``lechpe_model.conventions.ray_relative_to_quaternion``).

Position (camera optical frame, metres): the face centre is the box centre
pixel ``(u, v)``.

* With ``sensor_msgs/CameraInfo`` (``K`` non-zero and the image size equal):
  the depth is ``Z = fx * face_width_m / box_width_px`` (pinhole similar
  triangles; ``face_width_m`` defaults to :data:`AVERAGE_FACE_WIDTH_M`), and
  ``X = x_n Z, Y = y_n Z`` where ``(x_n, y_n)`` are the normalised
  coordinates of ``(u, v)`` (``((u - cx) / fx, (v - cy) / fy)``, after
  removing lens distortion ``D`` for the ``plumb_bob`` / ``rational_polynomial``
  models).
* Without usable CameraInfo: a pinhole with the principal point at the image
  centre and a horizontal field of view ``fallback_hfov_deg`` gives the pixel
  ray; the position is ``default_distance_m`` along that unit ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from geometry_msgs.msg import Pose, PoseArray, PoseStamped
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

from lechpe_model.conventions import ray_relative_to_quaternion

#: Average adult face width in metres used to turn a box width into a
#: distance. Bizygomatic (cheek-bone) breadth averages about 0.14 m in adults
#: (roughly 0.13 m for women, 0.145 m for men), which is what a face
#: detector's box spans horizontally for a frontal face. Turned heads look
#: narrower and are placed a little too far.
AVERAGE_FACE_WIDTH_M = 0.14

#: Names of the float32 fields of the per-face PointCloud2, in memory order.
FACE_FIELDS: tuple[str, ...] = (
    "x",  # face centre, camera optical frame, metres
    "y",
    "z",
    "yaw",  # degrees, lechpe_model.conventions
    "pitch",
    "roll",
    "yaw_std",  # degrees, standard deviation of the bin distribution
    "pitch_std",
    "roll_std",
    "confidence",  # [0, 1], the model's occlusion/confidence signal
    "score",  # [0, 1], face detector score
    "cluster",  # latent cluster index (integer stored as float), -1 if none
    "box_x1",  # detection box, pixels of the input image
    "box_y1",
    "box_x2",
    "box_y2",
    "track_id",  # stable integer id of the face in its camera stream (as float), -1 if none
    "tracked",  # 1: box predicted by the tracker (detector missed the face), 0: detected
)

_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics used to place faces.

    Attributes:
        fx, fy, cx, cy: pixels.
        dist: distortion coefficients for ``cv2.undistortPoints`` or None.
        metric: True when from CameraInfo (depth from face width),
            False for the assumed field of view (fixed distance along the ray).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    dist: np.ndarray | None = None
    metric: bool = True

    def normalized(self, u: float, v: float) -> tuple[float, float]:
        """Normalised image coordinates ``(x_n, y_n)`` of pixel ``(u, v)`` (undistorted)."""
        if self.dist is not None:
            k = np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)
            point = np.array([[[u, v]]], np.float64)
            # More iterations than cv2.undistortPoints' default 5: sub-millipixel rays.
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
            x_n, y_n = cv2.undistortPointsIter(point, k, self.dist, None, None, criteria).reshape(2)
            return float(x_n), float(y_n)
        return (u - self.cx) / self.fx, (v - self.cy) / self.fy


def camera_model_from_info(info: CameraInfo | None, width: int, height: int) -> CameraModel | None:
    """Intrinsics of ``info`` if they apply to a ``width`` x ``height`` image, else None.

    None when there is no CameraInfo, ``K`` is zero (uncalibrated), or the
    CameraInfo is for another resolution.
    """
    if info is None:
        return None
    k = np.asarray(info.k, dtype=np.float64).reshape(-1)
    if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
        return None
    if int(info.width) not in (0, int(width)) or int(info.height) not in (0, int(height)):
        return None
    dist = None
    d = np.asarray(info.d, dtype=np.float64).reshape(-1)
    if info.distortion_model in _DISTORTION_MODELS and d.size and np.any(d != 0):
        dist = d
    return CameraModel(fx=k[0], fy=k[4], cx=k[2], cy=k[5], dist=dist, metric=True)


def assumed_camera_model(width: int, height: int, hfov_deg: float) -> CameraModel:
    """Pinhole with square pixels, principal point at the centre and horizontal FOV ``hfov_deg``."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return CameraModel(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0, dist=None, metric=False)


def face_position(
    box: np.ndarray,
    camera: CameraModel,
    face_width_m: float = AVERAGE_FACE_WIDTH_M,
    default_distance_m: float = 1.0,
) -> np.ndarray:
    """Face centre in the camera optical frame.

    Args:
        box: ``(4,)`` ``(x1, y1, x2, y2)`` pixels.
        camera: intrinsics; ``camera.metric`` selects depth from the face width
            or ``default_distance_m`` along the unit pixel ray.
        face_width_m: real face width in metres.
        default_distance_m: distance for non-metric cameras, metres.

    Returns:
        ``(3,)`` float64 ``(X, Y, Z)`` metres.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    u, v = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    x_n, y_n = camera.normalized(u, v)
    ray = np.array([x_n, y_n, 1.0])
    if camera.metric:
        width_px = max(x2 - x1, 1e-6)
        depth = camera.fx * face_width_m / width_px
        return ray * depth
    return ray / np.linalg.norm(ray) * default_distance_m


def _pose(position: np.ndarray, angles: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    # The network sees the pose relative to the viewing ray of the face (its crop is
    # centred on it); turn it into the optical frame along that ray.
    qx, qy, qz, qw = (float(v) for v in ray_relative_to_quaternion(angles, position))
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    return pose


def _area(face: Any) -> float:
    x1, y1, x2, y2 = (float(v) for v in np.asarray(face.box).reshape(4))
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def primary_index(faces: list) -> int | None:
    """Index of the largest face (box area), or None when there is none."""
    if not faces:
        return None
    return int(np.argmax([_area(face) for face in faces]))


@dataclass
class FaceMessages:
    """Messages built for one frame (``pose`` is None without faces)."""

    pose: PoseStamped | None
    poses: PoseArray
    faces: PointCloud2


def face_table(faces: list, positions: list[np.ndarray]) -> np.ndarray:
    """``(N, len(FACE_FIELDS))`` float32 rows, one per face, columns :data:`FACE_FIELDS`."""
    rows = np.zeros((len(faces), len(FACE_FIELDS)), dtype=np.float32)
    for i, (face, position) in enumerate(zip(faces, positions, strict=True)):
        cluster = getattr(face, "cluster", None)
        track_id = getattr(face, "track_id", -1)
        rows[i] = np.concatenate(
            [
                np.asarray(position, np.float64).reshape(3),
                np.asarray(face.angles, np.float64).reshape(3),
                np.asarray(face.uncertainty, np.float64).reshape(3),
                [
                    float(getattr(face, "confidence", math.nan)),
                    float(getattr(face, "score", math.nan)),
                    -1.0 if cluster is None else float(cluster),
                ],
                np.asarray(face.box, np.float64).reshape(4),
                [float(track_id), float(bool(getattr(face, "tracked", False)))],
            ]
        )
    return rows


def table_to_cloud(header, rows: np.ndarray) -> PointCloud2:
    """Per-face rows -> unorganised ``PointCloud2`` (height 1, width N) with float32 fields."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    cloud = PointCloud2()
    cloud.header = header
    cloud.height = 1
    cloud.width = int(rows.shape[0])
    cloud.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(FACE_FIELDS)
    ]
    cloud.is_bigendian = False
    cloud.point_step = 4 * len(FACE_FIELDS)
    cloud.row_step = cloud.point_step * cloud.width
    cloud.is_dense = True
    cloud.data = rows.tobytes()
    return cloud


def cloud_to_table(cloud: PointCloud2) -> dict[str, np.ndarray]:
    """Read a per-face PointCloud2 back: field name -> ``(N,)`` float32 (for consumers/tests)."""
    count = int(cloud.width) * int(cloud.height)
    dtype = np.dtype(
        {
            "names": [f.name for f in cloud.fields],
            "formats": ["<f4"] * len(cloud.fields),
            "offsets": [int(f.offset) for f in cloud.fields],
            "itemsize": int(cloud.point_step),
        }
    )
    points = np.frombuffer(bytes(cloud.data), dtype=dtype, count=count)
    return {name: np.array(points[name]) for name in dtype.names}


def build_face_messages(
    header,
    faces: list,
    camera: CameraModel,
    face_width_m: float = AVERAGE_FACE_WIDTH_M,
    default_distance_m: float = 1.0,
) -> FaceMessages:
    """All messages for one frame; every header is ``header`` (the input image's).

    Args:
        header: ``std_msgs/Header`` of the input image (stamp, optical frame id).
        faces: ``lechpe_model.pipeline.FacePose`` list (box, angles, uncertainty,
            confidence, score, cluster).
        camera: from :func:`camera_model_from_info` or :func:`assumed_camera_model`.
    """
    positions = [face_position(f.box, camera, face_width_m, default_distance_m) for f in faces]
    poses = PoseArray()
    poses.header = header
    poses.poses = [_pose(p, f.angles) for f, p in zip(faces, positions, strict=True)]
    primary = primary_index(faces)
    pose = None
    if primary is not None:
        pose = PoseStamped()
        pose.header = header
        pose.pose = poses.poses[primary]
    cloud = table_to_cloud(header, face_table(faces, positions))
    return FaceMessages(pose=pose, poses=poses, faces=cloud)
